//! Legacy 0-fs flists (`.flist`): a tree packed with the test writer reads back exactly, and
//! hostile files (path tricks, cycles, absurd sizes and depths, tar.gz bombs, odd archives,
//! broken messages) are refused with the reason.

#[path = "common/legacy_writer.rs"]
mod legacy_writer;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use legacy_writer::{Entry, Item, LegacyFlist, aci_message, dir_message};
use zos_flist::legacy::legacy_capnp::special;
use zos_flist::legacy::{self, ROOT_KEY, dir_key};
use zos_flist::{Flist, Format, Kind};

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A tree with every kind the format holds: nested directories, files around the block size,
/// an empty file, setuid and sticky bits, relative and absolute symlinks, a fifo, and (as root)
/// owners with uid != gid and a character device.
fn tree(dir: &Path) {
    let mk = |p: &str| std::fs::create_dir_all(dir.join(p)).unwrap();
    mk("etc/ssl/certs");
    mk("usr/bin");
    mk("var/empty");
    mk("tmp");
    let noise = |p: &str, len: usize, seed: u8| {
        let data: Vec<u8> = (0..len)
            .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 29) as u8 ^ seed)
            .collect();
        std::fs::write(dir.join(p), data).unwrap();
    };
    noise("etc/passwd", 1392, 1);
    noise("etc/ssl/certs/ca.pem", 200_000, 2);
    noise("usr/bin/tool", 512 * 1024, 3);
    noise("usr/bin/big", 512 * 1024 * 3 + 17, 4);
    noise("usr/bin/same", 512 * 1024, 3); // same content as tool: shared blocks
    std::fs::write(dir.join("etc/empty"), b"").unwrap();
    std::fs::set_permissions(
        dir.join("usr/bin/tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(
        dir.join("var/empty"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::os::unix::fs::symlink("../usr/bin/tool", dir.join("etc/rel")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/big", dir.join("abs")).unwrap();
    nix::unistd::mkfifo(
        &dir.join("tmp/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    if root() {
        let own = |p: &str, u: u32, g: u32| {
            std::os::unix::fs::lchown(dir.join(p), Some(u), Some(g)).unwrap();
        };
        own("etc/passwd", 1234, 5678);
        own("var/empty", 65534, 100);
        own("etc/rel", 7, 8);
        nix::sys::stat::mknod(
            &dir.join("tmp/null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            libc::makedev(1, 3),
        )
        .unwrap();
    }
}

/// Every entry under `dir` as (path, kind, mode, uid, gid, size, mtime, target, rdev).
type Row = (String, Kind, u32, u32, u32, u64, i64, Option<Vec<u8>>, u64);

fn source_rows(dir: &Path) -> Vec<Row> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<Row>) {
        let p = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let m = std::fs::symlink_metadata(&p).unwrap();
        let kind = Kind::from_mode(m.mode()).unwrap();
        let target = (kind == Kind::Symlink).then(|| {
            std::fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        });
        let size = match kind {
            Kind::File => m.size(),
            Kind::Symlink => target.as_ref().unwrap().len() as u64,
            _ => 0,
        };
        out.push((
            format!("/{rel}"),
            kind,
            m.mode() & 0o7777,
            m.uid(),
            m.gid(),
            size,
            m.mtime(),
            target,
            if matches!(kind, Kind::Char | Kind::Block) {
                m.rdev()
            } else {
                0
            },
        ));
        if kind == Kind::Dir {
            let mut names: Vec<String> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            for n in names {
                let child = if rel.is_empty() {
                    n
                } else {
                    format!("{rel}/{n}")
                };
                walk(root, &child, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out
}

fn flist_rows(fl: &Flist) -> Vec<Row> {
    fl.walk()
        .into_iter()
        .map(|(path, n)| {
            let a = &n.attrs;
            let kind = a.kind();
            (
                path,
                kind,
                a.perm(),
                a.uid,
                a.gid,
                if kind == Kind::Dir { 0 } else { a.size },
                a.mtime,
                a.target.clone(),
                a.rdev,
            )
        })
        .collect()
}

#[test]
fn a_packed_tree_reads_back_exactly() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    tree(&src);
    let mut w = LegacyFlist::pack(&src);
    w.metadata.push((
        "backend".into(),
        r#"{"host": "zdb.example", "port": 9900, "namespace": "hub", "password": "s3cret"}"#.into(),
    ));
    w.metadata.push(("author".into(), "tests".into()));
    let out = t.path().join("tree.flist");
    w.write(&out);

    let fl = Flist::open_any(&out).unwrap();
    assert_eq!(fl.format(), Format::Legacy);
    assert_eq!(fl.format_version(), None);
    // Every path, kind, mode (with setuid and sticky), owner, size, time, link target and
    // device number, in the same order.
    let want = source_rows(&src);
    let got = flist_rows(&fl);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        if g.0 == "/" {
            // The root's times and owner are the source directory's too.
            assert_eq!((g.1, g.2, g.3, g.4), (w.1, w.2, w.3, w.4));
            continue;
        }
        assert_eq!(g, w);
    }
    // Content: every file's blocks, fetched from what the writer stored and checked against
    // their hashes, give the source file.
    for (path, n) in fl.walk() {
        if n.attrs.kind() != Kind::File {
            continue;
        }
        assert!(n.damaged.is_none(), "{path}");
        let mut content = Vec::new();
        for b in &n.blocks {
            let (hash, _) = legacy::split(b);
            let data = &w.blocks[&hex::encode(hash)];
            content.extend(legacy::decode_block(b, data).unwrap());
        }
        assert_eq!(
            content,
            std::fs::read(src.join(path.trim_start_matches('/'))).unwrap(),
            "{path}"
        );
    }
    let usr = fl.lookup(1, b"usr").unwrap();
    let bin = fl.lookup(usr.ino, b"bin").unwrap();
    assert_eq!(bin.nlink, 2);
    assert_eq!(usr.nlink, 3);
    assert_eq!(
        fl.lookup(bin.ino, b"tool").unwrap().blocks,
        fl.lookup(bin.ino, b"same").unwrap().blocks
    );

    // The backend becomes a route; inspect shows it without the password; other metadata are
    // tags.
    assert_eq!(fl.routes().len(), 1);
    assert_eq!(fl.routes()[0].url, "redis://:s3cret@zdb.example:9900/hub");
    assert_eq!(fl.tags()["author"], "tests");
    assert!(!fl.tags().contains_key("backend"));
    let i = zos_flist::inspect(&out).unwrap();
    assert_eq!(i.format, Format::Legacy);
    assert_eq!(i.routes[0].url, "redis://zdb.example:9900/hub");
    assert_eq!(i.totals.files, 6);
    assert_eq!(i.totals.symlinks, 2);
    assert_eq!(i.totals.blocks, 1 + 1 + 1 + 4 + 1);
    assert_eq!(i.totals.unique_blocks, 1 + 1 + 1 + 4);
    assert_eq!(i.totals.other, 1, "the fifo");
    assert_eq!(i.totals.devices, if root() { 1 } else { 0 });

    // The FL reader refuses it, so nothing that needs FL blocks (a mount, the hub) takes it.
    let e = Flist::open(&out).unwrap_err().to_string();
    assert!(e.contains("not an FL flist"), "{e}");
}

/// A flist with the given entries, written to `dir/name`.
fn write(dir: &Path, name: &str, entries: Vec<(String, Vec<u8>)>) -> PathBuf {
    let w = LegacyFlist {
        entries: entries.into_iter().collect(),
        ..LegacyFlist::default()
    };
    let p = dir.join(name);
    w.write(&p);
    p
}

fn refused(p: &Path) -> String {
    let e = Flist::open_any(p).expect_err("must be refused");
    // inspect refuses it the same way
    assert_eq!(
        zos_flist::inspect(p).unwrap_err().to_string(),
        e.to_string()
    );
    e.to_string()
}

fn file(name: &str) -> Entry {
    Entry::new(name, Item::File { blocks: vec![] })
}

#[test]
fn names_that_are_not_one_path_component_are_refused() {
    let t = tempfile::tempdir().unwrap();
    for (name, want) in [
        ("..", "not allowed"),
        (".", "not allowed"),
        ("a/b", "contains '/'"),
        ("../../etc/passwd", "contains '/'"),
        ("", "empty name"),
        ("a\0b", "NUL"),
    ] {
        let p = write(
            t.path(),
            "names.flist",
            vec![(ROOT_KEY.into(), dir_message("", "", 0, &[file(name)]))],
        );
        let e = refused(&p);
        assert!(e.contains(want), "{name:?}: {e}");
        assert!(e.contains("names.flist"), "the message names the file: {e}");
    }
    let long = "x".repeat(256);
    let p = write(
        t.path(),
        "long.flist",
        vec![(ROOT_KEY.into(), dir_message("", "", 0, &[file(&long)]))],
    );
    assert!(refused(&p).contains("longer than 255"));
    // Two entries with one name.
    let p = write(
        t.path(),
        "twice.flist",
        vec![(
            ROOT_KEY.into(),
            dir_message("", "", 0, &[file("a"), file("a")]),
        )],
    );
    assert!(refused(&p).contains("two entries named \"a\""));
}

#[test]
fn cycles_and_shared_directories_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let sub = |name: &str, key: &str| {
        Entry::new(
            name,
            Item::Dir {
                key: key.to_string(),
            },
        )
    };
    // A subdirectory that is the root again.
    let p = write(
        t.path(),
        "loop.flist",
        vec![(
            ROOT_KEY.into(),
            dir_message("", "", 0, &[sub("up", ROOT_KEY)]),
        )],
    );
    let e = refused(&p);
    assert!(e.contains("a cycle"), "{e}");
    // a -> b -> a
    let (a, b) = (dir_key("a"), dir_key("a/b"));
    let p = write(
        t.path(),
        "cycle.flist",
        vec![
            (ROOT_KEY.into(), dir_message("", "", 0, &[sub("a", &a)])),
            (a.clone(), dir_message("a", "", 0, &[sub("b", &b)])),
            (b.clone(), dir_message("a/b", "", 0, &[sub("again", &a)])),
        ],
    );
    let e = refused(&p);
    assert!(e.contains("/a/b/again") && e.contains("a cycle"), "{e}");
    // One directory under two names.
    let p = write(
        t.path(),
        "shared.flist",
        vec![
            (
                ROOT_KEY.into(),
                dir_message("", "", 0, &[sub("a", &a), sub("b", &a)]),
            ),
            (a.clone(), dir_message("a", "", 0, &[])),
        ],
    );
    assert!(refused(&p).contains("two names"));
    // A subdirectory whose key is nowhere.
    let p = write(
        t.path(),
        "missing.flist",
        vec![(ROOT_KEY.into(), dir_message("", "", 0, &[sub("gone", &a)]))],
    );
    assert!(refused(&p).contains("does not hold"));
    // No root at all.
    let p = write(
        t.path(),
        "noroot.flist",
        vec![(a, dir_message("a", "", 0, &[]))],
    );
    assert!(refused(&p).contains("no root directory"));
}

#[test]
fn absurd_sizes_depths_and_ids_are_refused_and_short_files_are_damaged() {
    let t = tempfile::tempdir().unwrap();
    // A size over 1 PiB.
    let p = write(
        t.path(),
        "size.flist",
        vec![(
            ROOT_KEY.into(),
            dir_message("", "", 0, &[file("huge").size(1 << 60)]),
        )],
    );
    assert!(refused(&p).contains("larger than"));
    // Directories nested deeper than any path.
    let mut entries = Vec::new();
    let mut rel = String::new();
    for _ in 0..=legacy::MAX_DEPTH {
        let child = if rel.is_empty() {
            "d".to_string()
        } else {
            format!("{rel}/d")
        };
        entries.push((
            dir_key(&rel),
            dir_message(
                &rel,
                "",
                0,
                &[Entry::new(
                    "d",
                    Item::Dir {
                        key: dir_key(&child),
                    },
                )],
            ),
        ));
        rel = child;
    }
    entries.push((dir_key(&rel), dir_message(&rel, "", 0, &[])));
    let p = write(t.path(), "deep.flist", entries);
    assert!(refused(&p).contains("deeper than 2048"));
    // A block hash that is not 16 bytes.
    let p = write(
        t.path(),
        "hash.flist",
        vec![(
            ROOT_KEY.into(),
            dir_message(
                "",
                "",
                0,
                &[Entry::new(
                    "f",
                    Item::File {
                        blocks: vec![([1; 16], [2; 16])],
                    },
                )
                .size(10)],
            ),
        )],
    );
    // (a well-formed one first: it reads)
    assert!(Flist::open_any(&p).is_ok());
    let mut msg = capnp::message::Builder::new_default();
    {
        let d = msg.init_root::<legacy::legacy_capnp::dir::Builder<'_>>();
        let mut n = d.init_contents(1).get(0);
        n.set_name("f");
        n.set_size(10);
        let mut b = n.init_attributes().init_file().init_blocks(1).get(0);
        b.set_hash(&[1; 15]);
        b.set_key(&[2; 16]);
    }
    let p = write(
        t.path(),
        "hash.flist",
        vec![(
            ROOT_KEY.into(),
            capnp::serialize::write_message_to_words(&msg),
        )],
    );
    assert!(refused(&p).contains("not 16 bytes"));
    // An ACI whose uid is out of range.
    let p = write(
        t.path(),
        "uid.flist",
        vec![
            (ROOT_KEY.into(), dir_message("", "acl", 0, &[])),
            ("acl".into(), aci_message("x", "y", 0o755, -5, 0)),
        ],
    );
    assert!(refused(&p).contains("out of range"));
    // A file whose blocks do not cover its size is kept and marked, as in an FL flist.
    let p = write(
        t.path(),
        "short.flist",
        vec![(
            ROOT_KEY.into(),
            dir_message("", "", 0, &[file("short").size(3), file("ok")]),
        )],
    );
    let fl = Flist::open_any(&p).unwrap();
    let d = fl.damaged();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, "/short");
    assert!(d[0].1.contains("0 blocks for a size of 3 bytes"), "{d:?}");
}

#[test]
fn broken_messages_are_refused() {
    let t = tempfile::tempdir().unwrap();
    // Not a capnp message.
    let p = write(
        t.path(),
        "junk.flist",
        vec![(ROOT_KEY.into(), b"definitely not capnp".to_vec())],
    );
    assert!(refused(&p).contains("not a valid message"));
    // A message whose contents list claims 2^29 entries it does not hold.
    let mut words = dir_message("", "", 0, &[file("a")]);
    // segment table (8 bytes), root pointer (8), Dir data (2 words), pointers: contents is the
    // third pointer; rewrite its element count (upper 29 bits of its second half).
    let at = 8 + 8 + 16 + 2 * 8;
    let mut ptr = u64::from_le_bytes(words[at..at + 8].try_into().unwrap());
    assert_eq!(ptr & 3, 1, "a list pointer");
    ptr = (ptr & 0xFFFF_FFFF) | ((0x1FFF_FFFFu64 << 3 | 7) << 32);
    words[at..at + 8].copy_from_slice(&ptr.to_le_bytes());
    let p = write(t.path(), "count.flist", vec![(ROOT_KEY.into(), words)]);
    assert!(refused(&p).contains("not a valid message"));
    // A special of an unknown type is skipped (as 0-fs and rfs do), a device keeps its number.
    let p = write(
        t.path(),
        "special.flist",
        vec![(
            ROOT_KEY.into(),
            dir_message(
                "",
                "",
                0,
                &[
                    Entry::new(
                        "odd",
                        Item::Special {
                            kind: special::Type::Unknown,
                            data: String::new(),
                        },
                    ),
                    Entry::new(
                        "sda",
                        Item::Special {
                            kind: special::Type::Block,
                            data: "8,0".into(),
                        },
                    ),
                ],
            ),
        )],
    );
    let fl = Flist::open_any(&p).unwrap();
    assert!(fl.lookup(1, b"odd").is_none());
    let sda = fl.lookup(1, b"sda").unwrap();
    assert_eq!(sda.attrs.kind(), Kind::Block);
    assert_eq!(sda.attrs.rdev, libc::makedev(8, 0));
    assert_eq!(sda.attrs.perm(), 0o444, "no ACI: read-only for everyone");
}

/// A tar.gz of the given (name, type, bytes) members, written to `path`.
fn archive(path: &Path, members: &[(&str, tar::EntryType, &[u8])]) {
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(gz);
    for (name, kind, data) in members {
        // Names are set byte for byte: the tar crate refuses to write `..`, a hostile tool
        // does not.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        if *kind == tar::EntryType::Symlink {
            h.set_size(0);
            h.set_link_name("/etc/shadow").unwrap();
        }
        h.set_cksum();
        tar.append(&h, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

#[test]
fn odd_archives_and_tar_gz_bombs_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let good = LegacyFlist {
        entries: [(ROOT_KEY.to_string(), dir_message("", "", 0, &[]))].into(),
        ..LegacyFlist::default()
    };
    let db_path = t.path().join("db.sqlite3");
    good.write_db(&db_path);
    let db = std::fs::read(&db_path).unwrap();
    use tar::EntryType as T;

    // The plain member name, without "./", reads.
    let p = t.path().join("plain.flist");
    archive(&p, &[("flistdb.sqlite3", T::Regular, &db)]);
    assert_eq!(Flist::open_any(&p).unwrap().len(), 1);

    for (name, members, want) in [
        (
            "extra",
            vec![
                ("flistdb.sqlite3", T::Regular, &db[..]),
                ("../../etc/cron.d/x", T::Regular, b"boom".as_slice()),
            ],
            "holds \"../../etc/cron.d/x\"",
        ),
        (
            "link",
            vec![("flistdb.sqlite3", T::Symlink, b"".as_slice())],
            "only the regular file",
        ),
        (
            "twice",
            vec![
                ("flistdb.sqlite3", T::Regular, &db[..]),
                ("./flistdb.sqlite3", T::Regular, &db[..]),
            ],
            "twice",
        ),
        ("empty", vec![], "holds no flistdb.sqlite3"),
        (
            "notsql",
            vec![("flistdb.sqlite3", T::Regular, b"hello".as_slice())],
            "not an SQLite database",
        ),
        (
            "many",
            (0..9)
                .map(|_| ("./", T::Directory, b"".as_slice()))
                .collect(),
            "more than 8 entries",
        ),
    ] {
        let p = t.path().join(format!("{name}.flist"));
        archive(&p, &members);
        let e = refused(&p);
        assert!(e.contains(want), "{name}: {e}");
    }

    // A bomb: 300 MiB of zeros as the database (about 300 KiB compressed). Refused by its size
    // before anything is written; the reader's memory and disk stay small.
    let p = t.path().join("bomb.flist");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&p).unwrap(),
            flate2::Compression::best(),
        );
        let mut tar = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(T::Regular);
        h.set_mode(0o644);
        let len = 300u64 << 20;
        h.set_size(len);
        tar.append_data(
            &mut h,
            "flistdb.sqlite3",
            std::io::Read::take(std::io::repeat(0), len),
        )
        .unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    }
    assert!(std::fs::metadata(&p).unwrap().len() < 1 << 20);
    let started = std::time::Instant::now();
    let e = refused(&p);
    assert!(e.contains("more than the 268435456"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // A bomb hidden in a member the reader skips: a "./" directory entry whose header claims
    // 300 MiB of data. Skipping it still decompresses it; the reader stops at the archive's
    // bound (MAX_ARCHIVE_BYTES) instead of inflating all of it.
    let p = t.path().join("hidden.flist");
    {
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&p).unwrap(),
            flate2::Compression::best(),
        );
        let mut h = tar::Header::new_gnu();
        h.set_path("./").unwrap();
        h.set_entry_type(T::Directory);
        h.set_mode(0o755);
        let len = 300u64 << 20;
        h.set_size(len);
        h.set_cksum();
        gz.write_all(h.as_bytes()).unwrap();
        std::io::copy(&mut std::io::Read::take(std::io::repeat(0), len), &mut gz).unwrap();
        gz.write_all(&[0u8; 1024]).unwrap();
        gz.finish().unwrap();
    }
    let e = refused(&p);
    assert!(e.contains("decompresses to more than"), "{e}");

    // Garbage where the next header should be: refused as damaged, not skipped.
    let p = t.path().join("garbage.flist");
    {
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&p).unwrap(),
            flate2::Compression::default(),
        );
        let mut h = tar::Header::new_gnu();
        h.set_path("flistdb.sqlite3").unwrap();
        h.set_entry_type(T::Regular);
        h.set_mode(0o644);
        h.set_size(db.len() as u64);
        h.set_cksum();
        gz.write_all(h.as_bytes()).unwrap();
        gz.write_all(&db).unwrap();
        gz.write_all(&vec![0u8; (512 - db.len() % 512) % 512])
            .unwrap();
        gz.write_all(&[1u8; 4096]).unwrap();
        gz.finish().unwrap();
    }
    let e = refused(&p);
    assert!(e.contains("cannot read the tar.gz"), "{e}");
}

#[test]
fn a_file_of_neither_format_says_what_was_expected() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("notes.txt");
    std::fs::write(&p, "hello").unwrap();
    let e = Flist::open_any(&p).unwrap_err().to_string();
    assert!(
        e.contains("expected an FL flist") && e.contains("legacy 0-fs flist"),
        "{e}"
    );
    let e = zos_flist::inspect(&p).unwrap_err().to_string();
    assert!(e.contains("expected an FL flist"), "{e}");
}

#[test]
fn a_trigger_in_the_database_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let good = LegacyFlist {
        entries: [(ROOT_KEY.to_string(), dir_message("", "", 0, &[]))].into(),
        ..LegacyFlist::default()
    };
    let db = t.path().join("flistdb.sqlite3");
    good.write_db(&db);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TRIGGER t AFTER INSERT ON entries BEGIN DELETE FROM entries; END;")
        .unwrap();
    let p = t.path().join("trigger.flist");
    archive(
        &p,
        &[(
            "flistdb.sqlite3",
            tar::EntryType::Regular,
            &std::fs::read(&db).unwrap(),
        )],
    );
    assert!(refused(&p).contains("a trigger"));
}

#[test]
fn a_deep_and_wide_flist_opens_in_linear_time() {
    // 2000 levels of 200-byte names, then 100 000 files at the bottom: paths of 400 KB. Opening
    // must not build a path per entry (that would be 40 GB of copying).
    let t = tempfile::tempdir().unwrap();
    let name = "n".repeat(200);
    let mut entries = Vec::new();
    let mut rel = String::new();
    for _ in 0..2000 {
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        entries.push((
            dir_key(&rel),
            // (the location field, which readers ignore, left empty to keep the file small)
            dir_message(
                "",
                "",
                0,
                &[Entry::new(
                    &name,
                    Item::Dir {
                        key: dir_key(&child),
                    },
                )],
            ),
        ));
        rel = child;
    }
    let files: Vec<Entry> = (0..100_000).map(|i| file(&format!("f{i}"))).collect();
    entries.push((dir_key(&rel), dir_message("", "", 0, &files)));
    let p = write(t.path(), "wide.flist", entries);
    let started = std::time::Instant::now();
    let fl = Flist::open_any(&p).unwrap();
    assert_eq!(fl.len(), 1 + 2000 + 100_000);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
