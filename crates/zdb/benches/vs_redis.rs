//! `zos-zdb` beside Debian's `redis-server` (append-only file, `appendfsync everysec`: the same
//! durability as zos-zdb's default) in one run on the same machine, both loaded by
//! `redis-benchmark`: SET and GET of 4 KiB values, operations per second and p99 latency.
//!
//! `cargo bench -p zos-zdb --bench vs_redis` (`scripts/install-deps.sh` installs redis-server and
//! redis-tools). Options through the environment: `ZOS_BENCH_REQUESTS` (per test, default
//! 100000), `ZOS_BENCH_CONNS` (default 50).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Killed {
    let out = std::fs::File::create(log).unwrap();
    Killed(
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}")),
    )
}

/// One `redis-benchmark` test: (requests per second, p99 in ms).
fn load(port: u16, test: &str, password: Option<&str>) -> (f64, f64) {
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", test, "-d", "4096", "--csv", "-r", "100000"])
        .args(["-n", &env("ZOS_BENCH_REQUESTS", 100_000).to_string()])
        .args(["-c", &env("ZOS_BENCH_CONNS", 50).to_string()]);
    if let Some(p) = password {
        cmd.args(["-a", p]);
    }
    let out = cmd
        .output()
        .expect("redis-benchmark (apt-get install redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let row = text
        .lines()
        .find(|l| {
            l.to_ascii_uppercase()
                .starts_with(&format!("\"{}", test.to_ascii_uppercase()))
        })
        .unwrap_or_else(|| {
            panic!(
                "no {test} figures from redis-benchmark: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let cols: Vec<f64> = row
        .split(',')
        .skip(1)
        .map(|c| c.trim_matches('"').parse().unwrap_or(f64::NAN))
        .collect();
    (cols[0], cols[5])
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("vs_redis: benchmark");
        return;
    }
    for tool in ["redis-server", "redis-benchmark"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("{tool} is missing: run scripts/install-deps.sh");
            std::process::exit(1);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (zport, rport) = (free_port(), free_port());
    let password = "bench-admin";
    std::fs::create_dir_all(dir.path().join("zdb")).unwrap();
    std::fs::create_dir_all(dir.path().join("redis")).unwrap();
    let _zdb = spawn(
        Command::new(env!("CARGO_BIN_EXE_zos-zdb"))
            .args(["--listen", &format!("127.0.0.1:{zport}")])
            .arg("--data")
            .arg(dir.path().join("zdb"))
            .env("ZOS_ZDB_ADMIN", password),
        &dir.path().join("zdb.log"),
    );
    let _redis = spawn(
        Command::new("redis-server")
            .args(["--port", &rport.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir.path().join("redis")),
        &dir.path().join("redis.log"),
    );
    wait_port(zport);
    wait_port(rport);

    println!(
        "4 KiB values, {} requests per test, {} connections, same machine, one run",
        env("ZOS_BENCH_REQUESTS", 100_000),
        env("ZOS_BENCH_CONNS", 50)
    );
    println!(
        "{:<6} {:>14} {:>10} {:>14} {:>10} {:>8}",
        "test", "zos-zdb ops/s", "p99 ms", "redis ops/s", "p99 ms", "ratio"
    );
    // SET first: GET then reads the keys SET wrote (the same random key space).
    for test in ["set", "get"] {
        let (z_rps, z_p99) = load(zport, test, Some(password));
        let (r_rps, r_p99) = load(rport, test, None);
        println!(
            "{:<6} {:>14.0} {:>10.3} {:>14.0} {:>10.3} {:>7.0}%",
            test.to_uppercase(),
            z_rps,
            z_p99,
            r_rps,
            r_p99,
            100.0 * z_rps / r_rps
        );
    }
}
