//! The `zos-grid` binary: serve with a ready file and a clean SIGTERM shutdown, and a refused
//! database. (The benchmarks are bench targets, run small by `tests/benches.rs`.)

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child on drop if it is still running.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn grid_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zos-grid"))
}

fn wait_for_file(path: &Path, child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("zos-grid exited early with {status}");
        }
        assert!(Instant::now() < deadline, "no ready file after 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "zos-grid did not exit after 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn serve_writes_the_ready_file_answers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ready = dir.path().join("ready");
    let child = grid_bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let url = wait_for_file(&ready, &mut guard.0);
    let url = url.trim();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let client = zos_client::GridClient::new(url)
        .unwrap()
        .with_identity(zos_types::Identity::generate().unwrap());
    let twin = client.create_twin(None).await.unwrap();
    assert!(client.health().await.unwrap().time > 0);
    assert!(data.join(zos_grid::DATABASE_FILE).exists());

    let pid = guard.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = wait_exit(&mut guard.0);
    assert!(status.success(), "exit status {status}");
    let err = client.health().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");

    // Started again on the same directory, it still knows the twin.
    std::fs::remove_file(&ready).unwrap();
    let child = grid_bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let url = wait_for_file(&ready, &mut guard.0);
    let again = zos_client::GridClient::new(url.trim()).unwrap();
    assert_eq!(again.get_twin(twin.id).await.unwrap(), twin);
    let pid = guard.0.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(wait_exit(&mut guard.0).success());
}

#[test]
fn serve_refuses_a_database_from_a_newer_binary() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    {
        let conn = rusqlite::Connection::open(data.join(zos_grid::DATABASE_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
    }
    let out = grid_bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("schema version 999") && stderr.contains("newer"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_takes_release_keys_per_runmode_and_refuses_bad_ones() {
    use zos_types::auth::{RequestAuth, Signer, unix_now};
    let dir = tempfile::tempdir().unwrap();
    let publisher = zos_types::Identity::generate().unwrap();
    let keys = dir.path().join("dev-keys.json");
    let json = serde_json::json!({ "keys": [publisher.public_key()], "threshold": 1 });
    std::fs::write(&keys, json.to_string()).unwrap();
    let dev = format!("dev={}", keys.display());

    // Refused at start: an unknown runmode, a missing file, an impossible threshold, a URL
    // that cannot go into a boot script.
    let bad_keys = dir.path().join("bad.json");
    let json = serde_json::json!({ "keys": [publisher.public_key()], "threshold": 2 });
    std::fs::write(&bad_keys, json.to_string()).unwrap();
    for (args, needle) in [
        (
            vec![
                "--release-keys".to_string(),
                format!("staging={}", keys.display()),
            ],
            "staging",
        ),
        (
            vec!["--release-keys".into(), "dev=/no/such/file".into()],
            "/no/such/file",
        ),
        (
            vec![
                "--release-keys".into(),
                format!("dev={}", bad_keys.display()),
            ],
            "threshold 2 of 1",
        ),
        (
            vec![
                "--release-keys".into(),
                dev.clone(),
                "--boot-url".into(),
                "http://a b".into(),
            ],
            "boot script",
        ),
    ] {
        let out = grid_bin()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("refused"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }

    let ready = dir.path().join("ready");
    let child = grid_bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--ready-file")
        .arg(&ready)
        .args(["--release-keys", &dev])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let url = wait_for_file(&ready, &mut guard.0).trim().to_string();
    let http = reqwest::Client::new();
    let error = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap();
        (status, v["error"].as_str().unwrap_or_default().to_string())
    };
    let (s, e) = error(
        http.get(format!("{url}/releases/dev"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    assert!(
        e.contains("no release of runmode dev is published yet"),
        "{e}"
    );
    let (s, e) = error(http.get(format!("{url}/releases/qa")).send().await.unwrap()).await;
    assert_eq!(s, 404);
    assert!(e.contains("no releases of runmode qa"), "{e}");
    // The configured key may upload boot files.
    let body = b"a kernel".to_vec();
    let path = format!("/boot/files/{}", zos_flist::hub::sha256_hex(&body));
    let auth = RequestAuth::sign(
        &publisher,
        Signer::Key(publisher.public_key()),
        "PUT",
        &path,
        unix_now(),
        &body,
    );
    let resp = http
        .put(format!("{url}{path}"))
        .header("authorization", auth.to_string())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    Command::new("kill")
        .args(["-TERM", &guard.0.id().to_string()])
        .status()
        .unwrap();
    assert!(wait_exit(&mut guard.0).success());
}
