//! Hostile flists: bad names, loops, absurd sizes, missing blocks, truncated databases.
//! Each gives a clear error; none escapes the mount point.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use zos_flist::mount::MountOptions;
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_flist::{BlockCache, DirStore, Flist, FormatError, MountError};

struct Fixture {
    _t: tempfile::TempDir,
    dir: PathBuf,
    store: DirStore,
    good: PathBuf,
}

fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_owned();
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(src.join("x"), "x").unwrap();
    write_noise(&src.join("blob"), 3 << 19, 5);
    std::os::unix::fs::symlink("/etc/shadow", src.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/shadow", src.join("climb-link")).unwrap();
    std::os::unix::fs::symlink("loop2", src.join("loop1")).unwrap();
    std::os::unix::fs::symlink("loop1", src.join("loop2")).unwrap();
    std::os::unix::fs::symlink("self", src.join("self")).unwrap();
    let store = DirStore::new(dir.join("store"));
    let good = dir.join("good.fl");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(pack(
            &Source::Dir(src),
            &good,
            Arc::new(store.clone()),
            &PackOptions::default(),
            &|_: &Progress| {},
        ))
        .unwrap();
    Fixture {
        _t: t,
        dir,
        store,
        good,
    }
}

/// A copy of the good flist with one SQL statement applied.
fn mutated(f: &Fixture, name: &str, sql: &str) -> PathBuf {
    let p = f.dir.join(name);
    std::fs::copy(&f.good, &p).unwrap();
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute_batch(sql).unwrap();
    p
}

fn try_mount(f: &Fixture, fl: &Path) -> Result<zos_flist::MountHandle, MountError> {
    let mnt = f
        .dir
        .join(format!("mnt-{}", fl.file_name().unwrap().to_string_lossy()));
    std::fs::create_dir_all(&mnt).unwrap();
    let cache = BlockCache::open(&f.dir.join("cache"), 1 << 30).unwrap();
    let r = zos_flist::mount(
        fl,
        &mnt,
        Arc::new(f.store.clone()),
        cache,
        &MountOptions::default(),
    );
    if r.is_err() {
        assert!(
            !zos_flist::mount::is_mount_point(&mnt),
            "a refused flist mounts nothing"
        );
    }
    r
}

#[test]
fn bad_names_sizes_and_structure_are_refused() {
    let f = fixture();
    let cases = [
        (
            "dotdot",
            "update inode set name = '..' where name = 'x'",
            "not allowed",
        ),
        (
            "slash",
            "update inode set name = '../../etc' where name = 'x'",
            "contains '/'",
        ),
        (
            "dot",
            "update inode set name = '.' where name = 'x'",
            "not allowed",
        ),
        (
            "empty",
            "update inode set name = '' where name = 'x'",
            "empty name",
        ),
        (
            "nul",
            "update inode set name = x'610062' where name = 'x'",
            "NUL",
        ),
        (
            "absurd",
            "update inode set size = 4611686018427387904 where name = 'blob'",
            "larger than",
        ),
        (
            "negative",
            "update inode set size = -1 where name = 'blob'",
            "out of range",
        ),
        (
            "orphan",
            "update inode set parent = 999 where name = 'x'",
            "does not exist",
        ),
        (
            "cycle",
            "update inode set parent = (select ino from inode where name = 'etc') where ino = (select ino from inode where name = 'etc')",
            "not reachable",
        ),
        (
            "file-parent",
            "update inode set parent = (select ino from inode where name = 'x') where name = 'blob'",
            "not a directory",
        ),
        (
            "dup",
            "update inode set name = 'x' where name = 'blob'",
            "two entries",
        ),
        ("no-root", "delete from inode where ino = 1", "no root"),
        (
            "link-nul",
            "update extra set data = x'2f6574630064' where ino = (select ino from inode where name = 'abs-link')",
            "NUL",
        ),
        (
            "bad-block",
            "update block set id = x'0102' where rowid = 1",
            "not 32 bytes",
        ),
        (
            "future",
            "update tag set value = '7' where key = 'zos-format'",
            "format version",
        ),
        ("no-table", "drop table block", "no table \"block\""),
    ];
    for (name, sql, want) in cases {
        let p = mutated(&f, &format!("{name}.fl"), sql);
        let err = Flist::open(&p).unwrap_err().to_string();
        assert!(
            err.contains(want),
            "{name}: {err:?} should mention {want:?}"
        );
        assert!(
            err.contains(&*p.to_string_lossy()),
            "{name}: the error names the file: {err}"
        );
        if can_mount("bad_names_sizes_and_structure_are_refused (mount part)") {
            let e = try_mount(&f, &p).unwrap_err();
            assert!(matches!(e, MountError::Flist(_)), "{name}: {e}");
        }
    }
}

/// Flists in the wild have files whose blocks do not cover their size (one made by rfs has a
/// file with a size and no blocks at all): the flist opens and mounts, those files fail with
/// EIO, and inspect lists them.
#[test]
fn files_whose_blocks_do_not_cover_their_size_fail_alone() {
    let f = fixture();
    let p = mutated(
        &f,
        "short.fl",
        "update inode set size = 99999999 where name = 'blob';
         delete from block where ino = (select ino from inode where name = 'x');",
    );
    let fl = Flist::open(&p).unwrap();
    let damaged = fl.damaged();
    assert_eq!(
        damaged.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        ["/blob", "/x"]
    );
    assert!(
        damaged[1].1.contains("0 blocks for a size of 1 bytes"),
        "{damaged:?}"
    );
    let i = zos_flist::inspect(&p).unwrap();
    assert_eq!(i.damaged.len(), 2);
    let x = i.entries.iter().find(|e| e.path == "/x").unwrap();
    assert!(x.damaged.is_some());
    let json = serde_json::to_value(&i).unwrap();
    assert_eq!(json["damaged"][0]["path"], "/blob");
    if !can_mount("files_whose_blocks_do_not_cover_their_size_fail_alone (mount part)") {
        return;
    }
    let m = try_mount(&f, &p).unwrap();
    let mnt = m.mountpoint().to_owned();
    for name in ["blob", "x"] {
        let e = std::fs::read(mnt.join(name)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{name}");
    }
    assert_eq!(std::fs::metadata(mnt.join("x")).unwrap().len(), 1);
    assert_eq!(
        std::fs::read_to_string(mnt.join("etc/passwd")).unwrap(),
        "root:x:0:0::/root:/bin/sh\n"
    );
    drop(m);
}

#[test]
fn truncated_and_foreign_files_are_refused() {
    let f = fixture();
    let len = std::fs::metadata(&f.good).unwrap().len();
    for cut in [len / 2, len - 100, 1000, 10] {
        let p = f.dir.join(format!("cut-{cut}.fl"));
        let data = std::fs::read(&f.good).unwrap();
        std::fs::write(&p, &data[..cut as usize]).unwrap();
        let err = Flist::open(&p).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::Corrupt { .. }
                    | FormatError::Damaged { .. }
                    | FormatError::NotAnFlist { .. }
            ),
            "cut at {cut}: {err:?}"
        );
        assert!(err.to_string().contains("cut-"), "{err}");
    }
    let p = f.dir.join("text.fl");
    std::fs::write(&p, "hello, not a database").unwrap();
    assert!(matches!(
        Flist::open(&p),
        Err(FormatError::NotAnFlist { .. })
    ));
}

#[test]
fn links_and_missing_blocks_stay_inside_the_mount() {
    if !can_mount("links_and_missing_blocks_stay_inside_the_mount") {
        return;
    }
    let f = fixture();
    // delete one block of "blob" from the store
    let fl = Flist::open(&f.good).unwrap();
    let blob = fl.lookup(1, b"blob").unwrap();
    std::fs::remove_file(f.store.path_of(&blob.blocks[2].id)).unwrap();
    let m = try_mount(&f, &f.good).unwrap();
    let mnt = m.mountpoint().to_owned();
    // symlinks are served as links, never followed by the file system
    assert_eq!(
        std::fs::read_link(mnt.join("abs-link")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert_eq!(
        std::fs::read_link(mnt.join("climb-link")).unwrap(),
        Path::new("../../../../../../etc/shadow")
    );
    for l in ["loop1", "loop2", "self"] {
        let e = std::fs::metadata(mnt.join(l)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{l}");
    }
    // names that climb are resolved by the kernel, never by the flist: ".." of the root is
    // the mount's parent, and no entry named ".." exists inside
    let names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n == ".." || n.contains('/')));
    // a missing block is EIO for that file only
    let e = std::fs::read(mnt.join("blob")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert_eq!(
        std::fs::read_to_string(mnt.join("etc/passwd")).unwrap(),
        "root:x:0:0::/root:/bin/sh\n"
    );
    drop(m);
}

/// SQL a tenant can put in the `.fl` file itself, each refused by the defensive reader before
/// anything is read: on open, on inspect and on mount.
const SQLITE_TRICKS: &[(&str, &str, &str)] = &[
    (
        "trigger",
        "create trigger t after insert on tag begin delete from inode; end",
        "a trigger \"t\"",
    ),
    (
        "view-shadowing-a-table",
        "alter table tag rename to tag_real; create view tag as select key, value from tag_real",
        "a view \"tag\"",
    ),
    (
        "virtual-table",
        "create virtual table v using fts5(x)",
        "a virtual table \"v\"",
    ),
    (
        "generated-column",
        "alter table inode add column g integer as (ino * 2)",
        "generated or hidden column \"g\"",
    ),
    (
        "huge-blob",
        "insert into tag values ('big', randomblob(1048576))",
        "longer than 65536 bytes",
    ),
    (
        "huge-string",
        "insert into route values (0, 255, printf('%.*c', 1048576, 'x'))",
        "longer than 65536 bytes",
    ),
];

#[test]
fn sqlite_triggers_views_virtual_tables_and_huge_values_are_refused() {
    let f = fixture();
    for (name, sql, want) in SQLITE_TRICKS {
        let p = mutated(&f, &format!("{name}.fl"), sql);
        let before = std::fs::read(&p).unwrap();
        let err = Flist::open(&p).unwrap_err().to_string();
        assert!(
            err.contains(want),
            "{name}: {err:?} should mention {want:?}"
        );
        assert!(err.contains(&*p.to_string_lossy()), "{name}: {err}");
        let err = zos_flist::inspect(&p).unwrap_err().to_string();
        assert!(err.contains(want), "{name} (inspect): {err}");
        assert_eq!(
            std::fs::read(&p).unwrap(),
            before,
            "{name}: the file is unchanged"
        );
        if can_mount("sqlite_triggers_views_virtual_tables_and_huge_values_are_refused (mount)") {
            let e = try_mount(&f, &p).unwrap_err();
            assert!(matches!(e, MountError::Flist(_)), "{name}: {e}");
            let chain = std::error::Error::source(&e).map(|s| s.to_string());
            assert!(
                chain.as_deref().is_some_and(|c| c.contains(want)),
                "{name}: {e}: {chain:?}"
            );
        }
    }
    // The good flist still opens: the defensive settings refuse nothing rfs writes.
    Flist::open(&f.good).unwrap();
}

#[test]
fn hard_link_rows_cannot_name_anything_outside_the_flist() {
    // The format's only aliasing is `hardlink (ino, target)`: two inode numbers of the same
    // flist. There is no column for a host path, so a link can only name an entry that the
    // reader validated; anything else is refused.
    let f = fixture();
    let file = |n: &str| format!("(select ino from inode where name = '{n}')");
    for (name, sql, want) in [
        (
            "hl-unknown",
            format!(
                "create table if not exists hardlink (ino integer primary key, target integer); insert into hardlink values ({}, 99999)",
                file("x")
            ),
            "unknown inode",
        ),
        (
            "hl-symlink",
            format!(
                "create table if not exists hardlink (ino integer primary key, target integer); insert into hardlink values ({}, {})",
                file("x"),
                file("abs-link")
            ),
            "must join a regular file",
        ),
        (
            "hl-text",
            format!(
                "create table if not exists hardlink (ino integer primary key, target integer); insert into hardlink values ({}, '/etc/shadow')",
                file("x")
            ),
            "has no inode",
        ),
    ] {
        let p = mutated(&f, &format!("{name}.fl"), &sql);
        let err = Flist::open(&p).unwrap_err().to_string();
        assert!(
            err.contains(want),
            "{name}: {err:?} should mention {want:?}"
        );
    }
}
