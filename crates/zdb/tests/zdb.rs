//! The real `zos-zdb` binary on 127.0.0.1, driven by `redis-cli` (Debian's `redis-tools`) and by
//! a small RESP client of its own where one connection must see a value between two commands
//! (the challenge of `AUTH SECURE`) or where thousands of writes are timed against a kill -9.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

const ADMIN: &str = "s3cret-admin";

struct Zdb {
    child: Child,
    port: u16,
    data: PathBuf,
    admin: Option<&'static str>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Zdb {
    fn start(data: &Path, port: u16, admin: Option<&'static str>, extra: &[&str]) -> Zdb {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_zos-zdb"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "warn")
            .env_remove("ZOS_ZDB_ADMIN")
            .stdin(Stdio::null());
        if let Some(a) = admin {
            cmd.env("ZOS_ZDB_ADMIN", a);
        }
        let child = cmd.spawn().expect("start zos-zdb");
        let z = Zdb {
            child,
            port,
            data: data.to_path_buf(),
            admin,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "zos-zdb did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        z
    }

    fn restart(mut self) -> Zdb {
        self.stop_hard();
        Zdb::start(&self.data.clone(), self.port, self.admin, &[])
    }

    /// kill -9: no chance to sync or clean up.
    fn stop_hard(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Runs `lines` as commands on one connection of `redis-cli`; one output line per reply line.
    fn cli(&self, lines: &[&str]) -> Vec<String> {
        let mut child = Command::new("redis-cli")
            .args(["--no-raw", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("redis-cli (Debian's redis-tools) is needed: run scripts/install-deps.sh");
        let mut input = lines.join("\n");
        input.push('\n');
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "redis-cli failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Zdb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts `redis-cli` answered `lines` with `want`, printing both on a mismatch.
#[track_caller]
fn expect(z: &Zdb, lines: &[&str], want: &[&str]) {
    let got = z.cli(lines);
    assert_eq!(got, want, "commands: {lines:?}");
}

#[derive(Debug, PartialEq)]
enum Resp {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

/// A minimal RESP client over one connection.
struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(port: u16) -> std::io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Conn {
            r: BufReader::new(s),
        })
    }

    fn cmd(&mut self, args: &[&[u8]]) -> std::io::Result<Resp> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        self.r.get_mut().write_all(&req)?;
        self.read()
    }

    fn read(&mut self) -> std::io::Result<Resp> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches("\r\n");
        let (tag, rest) = line.split_at(1);
        Ok(match tag {
            "+" => Resp::Status(rest.into()),
            "-" => Resp::Error(rest.into()),
            ":" => Resp::Int(rest.parse().unwrap()),
            "$" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    Resp::Bulk(None)
                } else {
                    let mut b = vec![0; n as usize + 2];
                    std::io::Read::read_exact(&mut self.r, &mut b)?;
                    b.truncate(n as usize);
                    Resp::Bulk(Some(b))
                }
            }
            "*" => {
                let n: usize = rest.parse().unwrap();
                Resp::Array((0..n).map(|_| self.read()).collect::<Result<_, _>>()?)
            }
            _ => panic!("bad reply line {line:?}"),
        })
    }
}

fn ok() -> Resp {
    Resp::Status("OK".into())
}

fn sha1_hex(s: &str) -> String {
    Sha1::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Admin and namespace passwords (plain and challenge), seq keys, the size limit, isolation
/// between namespaces, and all of it again after a kill -9 and a restart.
#[test]
fn namespaces_auth_seq_limits_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let z = Zdb::start(tmp.path(), free_port(), Some(ADMIN), &[]);

    // Without AUTH: no admin commands, and `default` is read-only.
    expect(
        &z,
        &["PING", "NSNEW alpha", "SET k v", "GET k", "AUTH wrong"],
        &[
            "PONG",
            "(error) Permission denied",
            "(error) Namespace is in read-only mode",
            "(nil)",
            "(error) Access denied",
        ],
    );

    // The admin makes two namespaces: a private user-key one with a size limit, and a
    // public sequential one.
    expect(
        &z,
        &[
            &format!("AUTH {ADMIN}"),
            "NSNEW alpha",
            "NSNEW beta",
            "NSNEW alpha",
            "NSNEW ../etc",
            "NSSET alpha password pa",
            "NSSET alpha public 0",
            "NSSET alpha maxsize 10",
            "NSSET beta password pb",
            "NSSET beta mode seq",
            "NSSET default maxsize 5",
            "SET dk dv",
            "NSLIST",
        ],
        &[
            "OK",
            "OK",
            "OK",
            "(error) This namespace is not available",
            "(error) This name is not allowed",
            "OK",
            "OK",
            "OK",
            "OK",
            "OK",
            "(error) Cannot update default namespace",
            "\"dk\"",
            "1) \"alpha\"",
            "2) \"beta\"",
            "3) \"default\"",
        ],
    );

    // alpha: private, so no way in without its password; the size limit counts live bytes.
    expect(
        &z,
        &[
            "SELECT alpha",
            "SELECT alpha nope",
            "SELECT alpha pa",
            "SET k 12345",
            "SET k 12345",
            "SET k2 123456",
            "SET k2 12345",
            "SET k 1234567890",
            "DEL k2",
            "DEL k2",
            "SET k 1234567890",
            "GET k",
            "EXISTS k",
            "EXISTS k2",
            "CHECK k",
            "LENGTH k",
            "DBSIZE",
            "SET \"\" x",
        ],
        &[
            "(error) Namespace protected and private",
            "(error) Access denied",
            "OK",
            "\"k\"",
            "(nil)",
            "(error) No space left on this namespace",
            "\"k2\"",
            "(error) No space left on this namespace",
            "OK",
            "(error) Key not found",
            "\"k\"",
            "\"1234567890\"",
            "(integer) 1",
            "(integer) 0",
            "(integer) 1",
            "(integer) 10",
            "(integer) 1",
            "(error) Invalid argument, key needed",
        ],
    );

    // beta: sequential ids, 4 bytes little-endian, given out by SET; only existing ids update.
    expect(
        &z,
        &[
            "SELECT beta pb",
            "SET \"\" first",
            "SET \"\" second",
            "SET \"\\x01\\x00\\x00\\x00\" SECOND",
            "SET \"\\x09\\x00\\x00\\x00\" nine",
            "SET mykey x",
            "GET \"\\x00\\x00\\x00\\x00\"",
            "GET \"\\x01\\x00\\x00\\x00\"",
            // Isolation: alpha's key is not here.
            "GET k",
            "EXISTS k",
            "DBSIZE",
        ],
        &[
            "OK",
            "\"\\x00\\x00\\x00\\x00\"",
            "\"\\x01\\x00\\x00\\x00\"",
            "\"\\x01\\x00\\x00\\x00\"",
            "(error) Invalid key, only update authorized",
            "(error) Invalid key, only update authorized",
            "\"first\"",
            "\"SECOND\"",
            "(nil)",
            "(integer) 0",
            "(integer) 2",
        ],
    );

    // Public with a password: readable without it, not writable; no admin commands either.
    expect(
        &z,
        &[
            "SELECT beta",
            "GET \"\\x00\\x00\\x00\\x00\"",
            "SET \"\" third",
            "DEL \"\\x00\\x00\\x00\\x00\"",
            "NSSET beta public 0",
            "NSDEL beta",
        ],
        &[
            "OK",
            "\"first\"",
            "(error) Namespace is in read-only mode",
            "(error) Namespace is in read-only mode",
            "(error) Permission denied",
            "(error) Permission denied",
        ],
    );

    // The challenge form: sha1("<challenge>:<password>"), each challenge good once.
    let mut c = Conn::open(z.port).unwrap();
    let Resp::Status(nonce) = c.cmd(&[b"AUTH", b"SECURE", b"CHALLENGE"]).unwrap() else {
        panic!("no challenge")
    };
    assert_eq!(nonce.len(), 16);
    let answer = sha1_hex(&format!("{nonce}:pa"));
    assert_eq!(
        c.cmd(&[b"SELECT", b"alpha", b"SECURE", answer.as_bytes()])
            .unwrap(),
        ok()
    );
    assert_eq!(
        c.cmd(&[b"GET", b"k"]).unwrap(),
        Resp::Bulk(Some(b"1234567890".to_vec()))
    );
    assert_eq!(
        c.cmd(&[b"SELECT", b"alpha", b"SECURE", answer.as_bytes()])
            .unwrap(),
        Resp::Error("No CHALLENGE requested, secure authentication not available".into()),
        "a challenge is good once"
    );
    let Resp::Status(nonce) = c.cmd(&[b"AUTH", b"SECURE", b"CHALLENGE"]).unwrap() else {
        panic!("no challenge")
    };
    let wrong = sha1_hex(&format!("{nonce}:not-the-admin"));
    assert_eq!(
        c.cmd(&[b"AUTH", b"SECURE", wrong.as_bytes()]).unwrap(),
        Resp::Error("Access denied".into())
    );
    let Resp::Status(nonce) = c.cmd(&[b"AUTH", b"SECURE", b"CHALLENGE"]).unwrap() else {
        panic!("no challenge")
    };
    let right = sha1_hex(&format!("{nonce}:{ADMIN}"));
    assert_eq!(
        c.cmd(&[b"AUTH", b"SECURE", right.as_bytes()]).unwrap(),
        ok()
    );
    assert_eq!(c.cmd(&[b"NSSET", b"beta", b"public", b"0"]).unwrap(), ok());
    drop(c);

    // Now private: no read access without the password.
    expect(
        &z,
        &["SELECT beta"],
        &["(error) Namespace protected and private"],
    );

    // kill -9 and start again: data, ids and settings are all still there.
    let z = z.restart();
    expect(
        &z,
        &[
            "GET dk",
            "SELECT alpha",
            "SELECT alpha pa",
            "GET k",
            "EXISTS k2",
            "SET k3 12",
            "SELECT beta pb",
            "GET \"\\x01\\x00\\x00\\x00\"",
            "SET \"\" third",
            "NSINFO beta",
        ],
        &[
            "\"dv\"",
            "(error) Namespace protected and private",
            "OK",
            "\"1234567890\"",
            "(integer) 0",
            "(error) No space left on this namespace",
            "OK",
            "\"SECOND\"",
            "\"\\x02\\x00\\x00\\x00\"",
            "\"# namespace\\nname: beta\\nentries: 3\\npublic: no\\npassword: yes\\n\
             data_size_bytes: 16\\ndata_size_mb: 0.00\\ndata_limits_bytes: 0\\n\
             data_disk_bytes: 174\\ndata_files: 1\\nindex_size_bytes: 0\\n\
             index_size_kb: 0.00\\nmode: sequential\\nworm: no\\nlocked: no\\n\
             next_internal_id: 0x00000003\\n\"",
        ],
    );

    // Lock (the grace period) keeps reads and refuses writes; deleting removes the files.
    expect(
        &z,
        &[
            &format!("AUTH {ADMIN}"),
            "NSSET alpha lock 1",
            "SELECT alpha pa",
            "GET k",
            "SET k 1",
            "SELECT default",
            "NSDEL alpha",
            "SELECT alpha pa",
            "NSSET beta mode user",
        ],
        &[
            "OK",
            "OK",
            "OK",
            "\"1234567890\"",
            "(error) Namespace is temporarily locked (read-only)",
            "OK",
            "OK",
            "(error) Namespace not found",
            "(error) Cannot change mode of used namespace",
        ],
    );
    assert!(!tmp.path().join("alpha").exists());
    assert!(tmp.path().join("beta").exists());

    // A deletion interrupted after its rename: the leftovers go at the next start, and the
    // namespace does not come back.
    let left = tmp.path().join(".deleted-beta-1");
    std::fs::rename(tmp.path().join("beta"), &left).unwrap();
    let z = z.restart();
    assert!(!left.exists());
    expect(
        &z,
        &["NSLIST", "SELECT beta pb"],
        &["1) \"default\"", "(error) Namespace not found"],
    );
}

/// SCAN and RSCAN walk every key once, KEYCUR starts a walk after a key, HISTORY goes back
/// through overwritten values.
#[test]
fn scan_keycur_history() {
    let tmp = tempfile::tempdir().unwrap();
    let z = Zdb::start(tmp.path(), free_port(), None, &[]);
    let mut c = Conn::open(z.port).unwrap();
    for i in 0..250 {
        let k = format!("key{i:03}");
        c.cmd(&[b"SET", k.as_bytes(), b"v"]).unwrap();
    }
    c.cmd(&[b"SET", b"key000", b"v2"]).unwrap();
    c.cmd(&[b"DEL", b"key001"]).unwrap();

    let walk = |c: &mut Conn, cmd: &[u8], start: Option<Vec<u8>>| {
        let mut keys = Vec::new();
        let mut cursor = start;
        loop {
            let r = match &cursor {
                None => c.cmd(&[cmd]).unwrap(),
                Some(cur) => c.cmd(&[cmd, cur]).unwrap(),
            };
            match r {
                Resp::Error(e) => {
                    assert_eq!(e, "No more data");
                    return keys;
                }
                Resp::Array(mut parts) => {
                    let Resp::Array(items) = parts.pop().unwrap() else {
                        panic!()
                    };
                    let Resp::Bulk(next) = parts.pop().unwrap() else {
                        panic!()
                    };
                    for item in items {
                        let Resp::Array(f) = item else { panic!() };
                        let Resp::Bulk(Some(k)) = &f[0] else { panic!() };
                        keys.push(String::from_utf8(k.clone()).unwrap());
                    }
                    cursor = next;
                }
                other => panic!("{other:?}"),
            }
        }
    };
    let forward = walk(&mut c, b"SCAN", None);
    let mut expected: Vec<String> = (2..250).map(|i| format!("key{i:03}")).collect();
    expected.push("key000".into());
    assert_eq!(
        forward, expected,
        "oldest write first; the overwritten key last"
    );
    let mut backward = walk(&mut c, b"RSCAN", None);
    backward.reverse();
    assert_eq!(backward, expected);
    let Resp::Bulk(Some(cur)) = c.cmd(&[b"KEYCUR", b"key247"]).unwrap() else {
        panic!()
    };
    assert_eq!(
        walk(&mut c, b"SCAN", Some(cur)),
        ["key248", "key249", "key000"]
    );
    assert_eq!(
        c.cmd(&[b"SCAN", b"bad"]).unwrap(),
        Resp::Error("Invalid key format".into())
    );

    let Resp::Array(h) = c.cmd(&[b"HISTORY", b"key000"]).unwrap() else {
        panic!()
    };
    assert_eq!(h[2], Resp::Bulk(Some(b"v2".to_vec())));
    let Resp::Bulk(Some(prev)) = &h[0] else {
        panic!()
    };
    let Resp::Array(h) = c.cmd(&[b"HISTORY", b"key000", prev]).unwrap() else {
        panic!()
    };
    assert_eq!(h[2], Resp::Bulk(Some(b"v".to_vec())));
    assert_eq!(
        h[0],
        Resp::Bulk(Some(vec![])),
        "the first value has no past"
    );

    // MGET mixes found and missing keys.
    assert_eq!(
        c.cmd(&[b"MGET", b"key002", b"nope", b"key000"]).unwrap(),
        Resp::Array(vec![
            Resp::Bulk(Some(b"v".to_vec())),
            Resp::Bulk(None),
            Resp::Bulk(Some(b"v2".to_vec())),
        ])
    );
}

/// Hostile input on the wire: an oversized value is refused from its header and the
/// connection closed; the server keeps serving others.
#[test]
fn hostile_requests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let z = Zdb::start(tmp.path(), free_port(), None, &["--max-value", "1024"]);
    let mut s = TcpStream::connect(("127.0.0.1", z.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$999999999\r\n")
        .unwrap();
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).unwrap();
    assert!(reply.starts_with("-Protocol error"), "{reply:?}");
    let mut rest = String::new();
    assert_eq!(
        BufReader::new(&s).read_line(&mut rest).unwrap(),
        0,
        "closed after the error reply, got {rest:?}"
    );
    let mut c = Conn::open(z.port).unwrap();
    assert_eq!(
        c.cmd(&[b"SET", b"k", &[b'x'; 1024]]).unwrap(),
        Resp::Bulk(Some(b"k".to_vec()))
    );
}

/// kill -9 of the server while a client writes as fast as it can: every write the server
/// acknowledged reads back after the restart, in both fsync policies.
#[test]
fn kill9_during_write_loop_loses_nothing_acknowledged() {
    for fsync in ["every-second", "always"] {
        let tmp = tempfile::tempdir().unwrap();
        let port = free_port();
        // Small data files, so the loop also crosses from one file to the next.
        let mut z = Zdb::start(
            tmp.path(),
            port,
            None,
            &["--fsync", fsync, "--datafile-size", "200000"],
        );
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut c = Conn::open(port).unwrap();
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{i}");
                    let value = vec![(i % 251) as u8; 100 + (i as usize * 37) % 3000];
                    match c.cmd(&[b"SET", key.as_bytes(), &value]) {
                        Ok(Resp::Bulk(Some(k))) if k == key.as_bytes() => acked.push(i),
                        Ok(other) => panic!("SET {key}: {other:?}"),
                        Err(_) => break,
                    }
                    i += 1;
                }
                (acked, i)
            })
        };
        std::thread::sleep(Duration::from_millis(1500));
        z.stop_hard();
        stop.store(true, Ordering::Relaxed);
        let (acked, sent) = writer.join().unwrap();
        eprintln!(
            "{fsync}: {} acknowledged of {sent} sent, {} data files",
            acked.len(),
            std::fs::read_dir(tmp.path().join("default"))
                .unwrap()
                .count()
                - 1
        );
        assert!(acked.len() > 100, "{fsync}: only {} writes", acked.len());
        let z = Zdb::start(tmp.path(), port, None, &["--fsync", fsync]);
        let mut c = Conn::open(z.port).unwrap();
        for &i in &acked {
            let want = vec![(i % 251) as u8; 100 + (i as usize * 37) % 3000];
            assert_eq!(
                c.cmd(&[b"GET", format!("k{i}").as_bytes()]).unwrap(),
                Resp::Bulk(Some(want)),
                "{fsync}: acknowledged write k{i} lost"
            );
        }
        // The one in flight, if any, is there whole or not at all.
        let Resp::Int(n) = c.cmd(&[b"DBSIZE"]).unwrap() else {
            panic!()
        };
        assert!(
            n as usize == acked.len() || n as usize == acked.len() + 1,
            "{fsync}: {n} keys after {} acknowledged of {sent} sent",
            acked.len()
        );
        // And redis-cli sees the same.
        let last = acked.last().unwrap();
        expect(&z, &[&format!("EXISTS k{last}")], &["(integer) 1"]);
    }
}

/// A client that pipelines GETs of a large value and reads nothing is held back by TCP: the
/// server does not buffer the answers (200 MiB of them here) in memory.
#[test]
fn unread_pipelined_answers_are_not_buffered() {
    let tmp = tempfile::tempdir().unwrap();
    let z = Zdb::start(tmp.path(), free_port(), None, &[]);
    let mut c = Conn::open(z.port).unwrap();
    let mib = vec![b'v'; 1 << 20];
    assert_eq!(
        c.cmd(&[b"SET", b"big", &mib]).unwrap(),
        Resp::Bulk(Some(b"big".to_vec()))
    );
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let before = rss(z.child.id());
    let mut s = TcpStream::connect(("127.0.0.1", z.port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(200);
    // The server stops reading once its answers back up, so this write may not finish.
    let _ = s.write_all(&req);
    std::thread::sleep(Duration::from_millis(500));
    let after = rss(z.child.id());
    assert!(
        after < before + 64 * 1024 * 1024,
        "server grew from {before} to {after} bytes"
    );
    drop(s);
    // And it still serves.
    assert_eq!(c.cmd(&[b"EXISTS", b"big"]).unwrap(), Resp::Int(1));
}

/// The Python `redis` client (Debian's `python3-redis`), as users' scripts use a namespace: a
/// private namespace with a password, `SELECT` with it, values in and out, seq keys, and the
/// server's refusal of a wrong password as the client's exception.
#[test]
fn the_python_redis_client_uses_a_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let z = Zdb::start(dir.path(), free_port(), Some("adm"), &[]);
    expect(
        &z,
        &[
            "AUTH adm",
            "NSNEW py",
            "NSSET py password secret",
            "NSSET py public 0",
            "NSNEW pyseq",
            "NSSET pyseq mode seq",
        ],
        &["OK", "OK", "OK", "OK", "OK", "OK"],
    );
    let script = r#"
import sys, redis
port = int(sys.argv[1])
r = redis.Redis(host="127.0.0.1", port=port)
r.execute_command("SELECT", "py", "secret")
r.execute_command("SET", "k1", b"value one")
assert r.execute_command("GET", "k1") == b"value one"
assert r.execute_command("EXISTS", "k1") == 1
assert r.execute_command("GET", "missing") is None
s = redis.Redis(host="127.0.0.1", port=port)
s.execute_command("SELECT", "pyseq")
# zdb's SET answers the key (redis-py would read redis's OK as a bool).
s.set_response_callback("SET", lambda r, **kw: r)
k = s.execute_command("SET", "", b"first")
assert len(k) == 4 and int.from_bytes(k, "little") == 0, k
assert s.execute_command("GET", k) == b"first"
w = redis.Redis(host="127.0.0.1", port=port)
try:
    w.execute_command("SELECT", "py", "wrong")
    print("wrong password accepted")
    sys.exit(1)
except redis.exceptions.ResponseError as e:
    print("refused:", e)
print("ok")
"#;
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(z.port.to_string())
        .output()
        .expect("Debian's python3 with python3-redis: run scripts/install-deps.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("refused:"), "{stdout}");
}
