//! The boot service on a real grid on loopback: boot files by hash, signed releases per
//! runmode, the farms' iPXE scripts, and hostile publishing that must change nothing.

mod common;

use std::sync::Arc;

use common::{TestGrid, error_message};
use serde_json::Value;
use zos_flist::BlockStore;
use zos_flist::hub::HubClient;
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_grid::GridConfig;
use zos_types::Identity;
use zos_types::auth::{RequestAuth, Signer, unix_now};
use zos_types::boot::ReleaseSummary;
use zos_types::release::{
    Artifact, MAX_MANIFEST_BYTES, Release, ReleaseKeys, RunMode, RuntimeFlist, SignedRelease,
};

const MAX_FILE: u64 = 1 << 20;

/// A grid serving dev (2 of 3 keys) and prod (its own key), boot files up to 1 MiB.
struct BootGrid {
    grid: TestGrid,
    dev: [Identity; 3],
    prod: Identity,
}

impl BootGrid {
    async fn start() -> Self {
        let dev = [
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
        ];
        let prod = Identity::generate().unwrap();
        let dev_keys = ReleaseKeys {
            keys: dev.iter().map(|i| i.public_key()).collect(),
            threshold: 2,
        };
        let prod_keys = ReleaseKeys {
            keys: vec![prod.public_key()],
            threshold: 1,
        };
        let grid = TestGrid::start_with(move |c: &mut GridConfig| {
            c.boot.release_keys.insert(RunMode::Dev, dev_keys.clone());
            c.boot.release_keys.insert(RunMode::Prod, prod_keys.clone());
            c.boot.max_file_bytes = MAX_FILE;
        })
        .await;
        Self { grid, dev, prod }
    }

    fn url(&self) -> String {
        self.grid.url()
    }

    /// A request signed with `key=` of `id` (or unsigned), answering status and body bytes.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        signer: Option<(&Identity, Signer)>,
    ) -> (u16, Vec<u8>) {
        let mut req = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{}{path}", self.url()))
            .body(body.clone());
        if let Some((id, signer)) = signer {
            let auth = RequestAuth::sign(id, signer, method, path, unix_now(), &body);
            req = req.header("authorization", auth.to_string());
        }
        let resp = req.send().await.expect("the grid answers");
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap().to_vec())
    }

    async fn put_as(&self, id: &Identity, path: &str, body: Vec<u8>) -> (u16, Value) {
        let (s, b) = self
            .send("PUT", path, body, Some((id, Signer::Key(id.public_key()))))
            .await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Vec<u8>) {
        self.send("GET", path, Vec::new(), None).await
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let (s, b) = self.get(path).await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    /// Uploads a boot file as the first dev key.
    async fn upload(&self, data: &[u8]) -> Artifact {
        let sha = sha(data);
        let (s, body) = self
            .put_as(&self.dev[0], &format!("/boot/files/{sha}"), data.to_vec())
            .await;
        assert!(s == 201 || s == 200, "{s} {body}");
        Artifact {
            sha256: sha,
            size: data.len() as u64,
        }
    }

    /// A small runtime flist pushed to the hub by a new twin.
    async fn flist(&self, name: &str) -> RuntimeFlist {
        let id = Identity::generate().unwrap();
        let c = zos_client::GridClient::new(&self.url())
            .unwrap()
            .with_identity(id.clone());
        let twin = c.create_twin(None).await.unwrap();
        let hub = HubClient::new(&self.url()).unwrap().with_auth(id, twin.id);
        let store: Arc<dyn BlockStore> = Arc::new(hub.block_store().unwrap());
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("root");
        std::fs::create_dir_all(src.join("usr/bin")).unwrap();
        std::fs::write(src.join("usr/bin/zosd"), format!("zosd of {name}")).unwrap();
        let out = work.path().join("r.fl");
        pack(
            &Source::Dir(src),
            &out,
            store,
            &PackOptions::default(),
            &|_: &Progress| {},
        )
        .await
        .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let pushed = hub.push(&format!("{name}.fl"), bytes, false).await.unwrap();
        RuntimeFlist {
            name: name.into(),
            sha256: pushed.flist.sha256,
            size: pushed.flist.size,
        }
    }

    /// Kernel, initramfs and a runtime flist on the grid, and a dev release naming them.
    async fn release(&self, version: &str) -> Release {
        let kernel = self.upload(format!("kernel {version}").as_bytes()).await;
        let initramfs = self.upload(format!("initramfs {version}").as_bytes()).await;
        let flist = self.flist("zos").await;
        Release {
            version: version.into(),
            runmode: RunMode::Dev,
            created: unix_now(),
            kernel,
            initramfs,
            flists: vec![flist],
            debug: None,
        }
    }

    async fn publish(&self, mode: &str, signed: &SignedRelease) -> (u16, Value) {
        self.put_as(
            &self.dev[0],
            &format!("/releases/{mode}"),
            serde_json::to_vec(signed).unwrap(),
        )
        .await
    }

    fn boot_dir_files(&self) -> usize {
        std::fs::read_dir(self.grid.data_dir().join("boot/files"))
            .unwrap()
            .count()
    }

    /// Files left in the boot service's temporary directory (refused uploads leave none).
    fn leftovers(&self) -> usize {
        std::fs::read_dir(self.grid.data_dir().join("boot/tmp"))
            .unwrap()
            .count()
    }

    fn stored_releases(&self) -> usize {
        std::fs::read_dir(self.grid.data_dir().join("boot/releases/dev"))
            .unwrap()
            .count()
    }
}

/// A PUT whose body is sent chunked (no declared length); answers the status.
async fn chunked_put(base: &str, path: &str, auth: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: {auth}\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    for c in body.chunks(64 * 1024) {
        let mut chunk = format!("{:x}\r\n", c.len()).into_bytes();
        chunk.extend_from_slice(c);
        chunk.extend_from_slice(b"\r\n");
        if tcp.write_all(&chunk).await.is_err() {
            break; // The grid may close once it has refused.
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text}"))
}

fn sha(data: &[u8]) -> String {
    zos_flist::hub::sha256_hex(data)
}

#[tokio::test]
async fn a_release_is_published_served_and_booted_by_hash() {
    let g = BootGrid::start().await;
    let (_, farm) = g.grid.farm("boot-farm").await;

    // Before any release a farm's script is a clear 404.
    let (s, body) = g
        .get_json(&format!("/boot/dev/farms/{}.ipxe", farm.id))
        .await;
    assert_eq!(s, 404);
    assert!(error_message(&body).contains("no release"), "{body}");

    let r1 = g.release("1.0.0").await;
    let signed = r1.sign(&[&g.dev[0], &g.dev[2]]).unwrap();
    let (s, body) = g.publish("dev", &signed).await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["version"], "1.0.0");
    assert_eq!(body["published"], true);
    // Sending it again (in another request: the same one would be a replay) changes nothing
    // and says so.
    let (s, body) = g
        .put_as(
            &g.dev[1],
            "/releases/dev",
            serde_json::to_vec(&signed).unwrap(),
        )
        .await;
    assert_eq!((s, body["published"].clone()), (200, Value::Bool(false)));

    let (s, cur) = g.get_json("/releases/dev").await;
    assert_eq!(s, 200);
    let cur: SignedRelease = serde_json::from_value(cur).unwrap();
    assert_eq!(cur, signed);
    let keys = ReleaseKeys {
        keys: g.dev.iter().map(|i| i.public_key()).collect(),
        threshold: 2,
    };
    assert_eq!(cur.verify_for(&keys, RunMode::Dev).unwrap(), r1);

    // The farm's script boots this release's kernel and initramfs by hash.
    let (s, script) = g.get(&format!("/boot/dev/farms/{}.ipxe", farm.id)).await;
    assert_eq!(s, 200);
    let script = String::from_utf8(script).unwrap();
    let grid = g.url();
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(
        script.contains(&format!(
            "kernel {grid}/boot/files/{} initrd=initramfs farmer_id={} runmode=dev grid={grid} ",
            r1.kernel.sha256, farm.id
        )),
        "{script}"
    );
    assert!(
        script.contains(&format!(
            "initrd --name initramfs {grid}/boot/files/{}",
            r1.initramfs.sha256
        )),
        "{script}"
    );
    // And the files are served as uploaded, counted by hash.
    let (s, kernel) = g.get(&format!("/boot/files/{}", r1.kernel.sha256)).await;
    assert_eq!((s, kernel), (200, b"kernel 1.0.0".to_vec()));
    let boot = g.grid.boot_fetches(&r1.kernel.sha256);
    assert_eq!(boot, 1);
    assert_eq!(g.grid.boot_fetches(&r1.initramfs.sha256), 0);

    // A newer release replaces it; the old one stays reachable by version.
    let r2 = g.release("1.1.0").await;
    let (s, body) = g
        .publish("dev", &r2.sign(&[&g.dev[1], &g.dev[2]]).unwrap())
        .await;
    assert_eq!(s, 201, "{body}");
    let (_, script) = g.get(&format!("/boot/dev/farms/{}.ipxe", farm.id)).await;
    assert!(
        String::from_utf8(script)
            .unwrap()
            .contains(&r2.kernel.sha256)
    );
    let (s, old) = g.get_json("/releases/dev/1.0.0").await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_value::<SignedRelease>(old).unwrap(),
        signed
    );
    let (s, list) = g.get_json("/releases?runmode=dev").await;
    assert_eq!(s, 200);
    let list: Vec<ReleaseSummary> = serde_json::from_value(list).unwrap();
    let versions: Vec<_> = list.iter().map(|r| r.release.version.as_str()).collect();
    assert_eq!(versions, ["1.1.0", "1.0.0"]);
    assert_eq!(
        list[1].signers,
        [g.dev[0].public_key(), g.dev[2].public_key()]
    );

    // Everything survives a restart.
    let mut grid = g.grid;
    grid.restart().await;
    let g = BootGrid {
        grid,
        dev: g.dev,
        prod: g.prod,
    };
    let (s, cur) = g.get_json("/releases/dev").await;
    assert_eq!(s, 200);
    assert!(cur["manifest"].as_str().unwrap().contains("\"1.1.0\""));
    let (s, kernel) = g.get(&format!("/boot/files/{}", r2.kernel.sha256)).await;
    assert_eq!((s, kernel), (200, b"kernel 1.1.0".to_vec()));
}

#[tokio::test]
async fn releases_not_signed_by_the_grids_keys_are_refused() {
    let g = BootGrid::start().await;
    let r = g.release("1.0.0").await;
    let stranger = Identity::generate().unwrap();

    // One of two needed signatures; a stranger's; a changed manifest; prod's key on dev.
    let one = r.sign(&[&g.dev[0]]).unwrap();
    let (s, body) = g.publish("dev", &one).await;
    assert_eq!(s, 403, "{body}");
    assert!(error_message(&body).contains("1 trusted release key(s), 2 needed"));
    let (s, body) = g
        .publish("dev", &r.sign(&[&g.dev[0], &stranger]).unwrap())
        .await;
    assert_eq!(s, 403);
    assert!(error_message(&body).contains(&stranger.public_key().to_string()));
    let mut tampered = r.sign(&[&g.dev[0], &g.dev[1]]).unwrap();
    tampered.manifest = tampered.manifest.replace("1.0.0", "1.0.1");
    assert_eq!(g.publish("dev", &tampered).await.0, 403);
    assert_eq!(g.publish("dev", &r.sign(&[&g.prod]).unwrap()).await.0, 403);

    // The request itself: signed by a stranger, a prod key, a twin, or not at all.
    let good = serde_json::to_vec(&r.sign(&[&g.dev[0], &g.dev[1]]).unwrap()).unwrap();
    let (s, body) = g.put_as(&stranger, "/releases/dev", good.clone()).await;
    assert_eq!(s, 403, "{body}");
    assert!(error_message(&body).contains("not one of this grid's release keys"));
    let (s, body) = g.put_as(&g.prod, "/releases/dev", good.clone()).await;
    assert_eq!(s, 403, "{body}");
    assert!(error_message(&body).contains("not a release key of runmode dev"));
    let (twin, _) = g.grid.twin().await;
    let id = twin.identity().unwrap().clone();
    let (s, _) = g
        .send(
            "PUT",
            "/releases/dev",
            good.clone(),
            Some((&id, Signer::Twin(twin.twin_id().unwrap()))),
        )
        .await;
    assert_eq!(s, 401);
    assert_eq!(
        g.send("PUT", "/releases/dev", good.clone(), None).await.0,
        401
    );
    let (s, _) = g
        .send(
            "PUT",
            &format!("/boot/files/{}", sha(b"x")),
            b"x".to_vec(),
            Some((&stranger, Signer::Key(stranger.public_key()))),
        )
        .await;
    assert_eq!(s, 403);

    // Nothing was published.
    assert_eq!(g.get_json("/releases/dev").await.0, 404);
    assert_eq!(g.stored_releases(), 0);
    // The good one still goes through.
    assert_eq!(g.put_as(&g.dev[1], "/releases/dev", good).await.0, 201);
}

#[tokio::test]
async fn older_versions_and_replayed_requests_are_refused() {
    let g = BootGrid::start().await;
    let r1 = g.release("1.0.0").await;
    let r2 = g.release("1.2.0").await;
    let s2 = r2.sign(&[&g.dev[0], &g.dev[1]]).unwrap();
    assert_eq!(g.publish("dev", &s2).await.0, 201);

    // The older release, validly signed, cannot come back.
    let (s, body) = g
        .publish("dev", &r1.sign(&[&g.dev[0], &g.dev[1]]).unwrap())
        .await;
    assert_eq!(s, 409, "{body}");
    assert!(error_message(&body).contains("not newer than the current 1.2.0"));
    // Nor other content under the current version.
    let mut other = r2.clone();
    other.created += 1;
    assert_eq!(
        g.publish("dev", &other.sign(&[&g.dev[0], &g.dev[1]]).unwrap())
            .await
            .0,
        409
    );
    // A captured request sent again is a replay.
    let r3 = g.release("1.3.0").await;
    let body = serde_json::to_vec(&r3.sign(&[&g.dev[0], &g.dev[1]]).unwrap()).unwrap();
    let auth = RequestAuth::sign(
        &g.dev[0],
        Signer::Key(g.dev[0].public_key()),
        "PUT",
        "/releases/dev",
        unix_now(),
        &body,
    )
    .to_string();
    let (s1, _) = common::raw(&g.url(), "PUT", "/releases/dev", body.clone(), Some(&auth)).await;
    let (s2, replay) = common::raw(&g.url(), "PUT", "/releases/dev", body, Some(&auth)).await;
    assert_eq!((s1, s2), (201, 401), "{replay}");
    let (_, cur) = g.get_json("/releases/dev").await;
    assert!(cur["manifest"].as_str().unwrap().contains("\"1.3.0\""));
    assert_eq!(g.stored_releases(), 2);
}

#[tokio::test]
async fn oversize_uploads_are_refused_and_store_nothing() {
    let g = BootGrid::start().await;
    let files = g.boot_dir_files();
    let big = vec![7u8; MAX_FILE as usize + 1];
    let (s, body) = g
        .put_as(&g.dev[0], &format!("/boot/files/{}", sha(&big)), big)
        .await;
    assert_eq!(s, 413, "{body}");
    // Without a declared length (chunked), the body is cut at the limit.
    let big = vec![8u8; MAX_FILE as usize + 1];
    let path = format!("/boot/files/{}", sha(&big));
    let auth = RequestAuth::sign(
        &g.dev[0],
        Signer::Key(g.dev[0].public_key()),
        "PUT",
        &path,
        unix_now(),
        &big,
    );
    let status = chunked_put(&g.url(), &path, &auth.to_string(), &big).await;
    assert_eq!(status, 413);
    assert_eq!(g.boot_dir_files(), files);
    assert_eq!(g.leftovers(), 0);

    // A manifest over the limit (padded with JSON blanks, validly signed) is refused.
    let r = g.release("1.0.0").await;
    let mut signed = r.sign(&[&g.dev[0], &g.dev[1]]).unwrap();
    signed.manifest.push_str(&" ".repeat(MAX_MANIFEST_BYTES));
    let msg = zos_types::release::signing_message(&signed.manifest);
    for (sig, id) in signed.signatures.iter_mut().zip([&g.dev[0], &g.dev[1]]) {
        sig.signature = id.sign(&msg);
    }
    let (s, body) = g.publish("dev", &signed).await;
    assert_eq!(s, 400, "{body}");
    assert!(error_message(&body).contains("more than the"), "{body}");
    // A body over the route's limit is refused before it is read.
    let (s, _) = g
        .put_as(
            &g.dev[0],
            "/releases/dev",
            vec![b' '; zos_grid::boot::MAX_RELEASE_BODY + 1],
        )
        .await;
    assert_eq!(s, 413);
    assert_eq!(g.stored_releases(), 0);
}

#[tokio::test]
async fn unknown_runmodes_farms_and_paths_are_refused() {
    let g = BootGrid::start().await;
    let (_, farm) = g.grid.farm("modes-farm").await;
    let r = g.release("1.0.0").await;
    assert_eq!(
        g.publish("dev", &r.sign(&[&g.dev[0], &g.dev[1]]).unwrap())
            .await
            .0,
        201
    );
    let f = farm.id;
    for (path, status, needle) in [
        (
            format!("/boot/staging/farms/{f}.ipxe"),
            400,
            "not one of dev, qa, test, prod",
        ),
        (
            format!("/boot/qa/farms/{f}.ipxe"),
            404,
            "no releases of runmode qa",
        ),
        (
            "/boot/dev/farms/4000000.ipxe".into(),
            404,
            "farm 4000000 does not exist",
        ),
        ("/boot/dev/farms/abc.ipxe".into(), 400, "FARM_ID.ipxe"),
        (format!("/boot/dev/farms/{f}"), 400, "FARM_ID.ipxe"),
        (
            "/boot/dev/farms/99999999999.ipxe".into(),
            400,
            "FARM_ID.ipxe",
        ),
        ("/releases/staging".into(), 400, "not one of"),
        ("/releases/qa".into(), 404, "no releases of runmode qa"),
        ("/releases/prod".into(), 404, "no release of runmode prod"),
        ("/releases/dev/1.0".into(), 400, "not a version"),
        ("/releases/dev/2.0.0".into(), 404, "no release 2.0.0"),
        ("/releases?runmode=staging".into(), 400, "not one of"),
        ("/boot/files/ABC".into(), 400, "not a SHA-256"),
        (
            format!("/boot/files/{}", "0".repeat(64)),
            404,
            "no boot file",
        ),
    ] {
        let (s, body) = g.get_json(&path).await;
        assert_eq!(s, status, "{path}: {body}");
        assert!(error_message(&body).contains(needle), "{path}: {body}");
    }
    // A release of one runmode is not taken under another.
    let mut p = r.clone();
    p.runmode = RunMode::Prod;
    let (s, body) = g
        .put_as(
            &g.prod,
            "/releases/dev",
            serde_json::to_vec(&p.sign(&[&g.prod]).unwrap()).unwrap(),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = g
        .put_as(
            &g.dev[0],
            "/releases/dev",
            serde_json::to_vec(&p.sign(&[&g.dev[0], &g.dev[1]]).unwrap()).unwrap(),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(error_message(&body).contains("runmode prod"), "{body}");
    let (s, _) = g
        .put_as(&g.dev[0], "/releases/staging", b"{}".to_vec())
        .await;
    assert_eq!(s, 400);
    // A Host header carrying script syntax is not written into a script.
    let resp = reqwest::Client::new()
        .get(format!("{}/boot/dev/farms/{f}.ipxe", g.url()))
        .header("host", "grid$x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}

#[tokio::test]
async fn wrong_hashes_and_missing_files_are_refused() {
    let g = BootGrid::start().await;
    let files = g.boot_dir_files();
    let (s, body) = g
        .put_as(
            &g.dev[0],
            &format!("/boot/files/{}", sha(b"one")),
            b"two".to_vec(),
        )
        .await;
    // The signature covers the body's hash, which is not the one the path names.
    assert_eq!(s, 401, "{body}");
    // Signed for the content the path names, but another body sent: hashed as it arrives.
    let path = format!("/boot/files/{}", sha(b"one"));
    let auth = RequestAuth::sign(
        &g.dev[0],
        Signer::Key(g.dev[0].public_key()),
        "PUT",
        &path,
        unix_now(),
        b"one",
    )
    .to_string();
    let (s, body) = common::raw(&g.url(), "PUT", &path, b"two".to_vec(), Some(&auth)).await;
    assert_eq!(s, 400, "{body}");
    assert!(error_message(&body).contains(&sha(b"two")), "{body}");
    assert_eq!(g.leftovers(), 0);
    let (s, _) = g
        .put_as(
            &g.dev[0],
            "/boot/files/../../registry.sqlite",
            b"x".to_vec(),
        )
        .await;
    assert!(s == 400 || s == 404, "{s}");
    let (s, _) = g
        .put_as(&g.dev[0], &format!("/boot/files/{}", sha(b"")), Vec::new())
        .await;
    assert_eq!(s, 400);
    assert_eq!(g.boot_dir_files(), files);

    // A release naming files the grid lacks, or with other sizes, is refused.
    let r = g.release("1.0.0").await;
    let mut missing = r.clone();
    missing.kernel = Artifact {
        sha256: sha(b"never uploaded"),
        size: 14,
    };
    let (s, body) = g
        .publish("dev", &missing.sign(&[&g.dev[0], &g.dev[1]]).unwrap())
        .await;
    assert_eq!(s, 400);
    assert!(error_message(&body).contains("upload it first"), "{body}");
    let mut size = r.clone();
    size.initramfs.size += 1;
    let (s, body) = g
        .publish("dev", &size.sign(&[&g.dev[0], &g.dev[1]]).unwrap())
        .await;
    assert_eq!(s, 400);
    assert!(error_message(&body).contains("the manifest says"), "{body}");
    let mut flist = r.clone();
    flist.flists[0].sha256 = sha(b"no such flist");
    let (s, body) = g
        .publish("dev", &flist.sign(&[&g.dev[0], &g.dev[1]]).unwrap())
        .await;
    assert_eq!(s, 400);
    assert!(
        error_message(&body).contains("not on this grid's hub"),
        "{body}"
    );
    assert_eq!(g.stored_releases(), 0);
}

#[tokio::test]
async fn admission_tokens_are_checked_before_they_reach_the_command_line() {
    let g = BootGrid::start().await;
    let (_, farm) = g.grid.farm("signed-farm").await;
    let (_, other) = g.grid.farm("other-farm").await;
    let r = g.release("1.0.0").await;
    assert_eq!(
        g.publish("dev", &r.sign(&[&g.dev[0], &g.dev[1]]).unwrap())
            .await
            .0,
        201
    );
    let script = |token: String| format!("/boot/dev/farms/{}.ipxe?admission={token}", farm.id);

    let token = g.grid.admission(farm.id);
    let (s, body) = g.get(&script(token.to_string())).await;
    assert_eq!(s, 200);
    let body = String::from_utf8(body).unwrap();
    let kernel = body.lines().find(|l| l.starts_with("kernel ")).unwrap();
    assert!(
        kernel.contains(&format!(" admission={token} console=")),
        "{kernel}"
    );

    // Another farm's token, a forged one, a malformed one, script syntax, an unknown parameter.
    let theirs = g.grid.admission(other.id);
    let forged = zos_types::policy::AdmissionToken::sign(
        &Identity::generate().unwrap(),
        farm.id,
        token.expires_at,
    );
    for (query, status, needle) in [
        (script(theirs.to_string()), 403, "not farm"),
        (
            script(forged.to_string()),
            403,
            "not signed by the farm's farmer",
        ),
        (script("abc".into()), 400, "not an admission token"),
        (script(format!("{token}$x")), 400, "not an admission token"),
        (
            format!("/boot/dev/farms/{}.ipxe?shell=1", farm.id),
            400,
            "invalid query",
        ),
    ] {
        let (s, body) = g.get_json(&query).await;
        assert_eq!(s, status, "{query}: {body}");
        assert!(error_message(&body).contains(needle), "{query}: {body}");
    }
    // Extra node arguments beside the token: the three known ones go on the command line,
    // after the token; anything else is refused by name and changes nothing.
    let (s, body) = g
        .get(&format!(
            "{}&args=zos-debug,zos-upgrade-gate=120,zos-upgrade-check=20",
            script(token.to_string())
        ))
        .await;
    assert_eq!(s, 200);
    let body = String::from_utf8(body).unwrap();
    let kernel = body.lines().find(|l| l.starts_with("kernel ")).unwrap();
    assert!(
        kernel.contains(&format!(
            " admission={token} zos-debug zos-upgrade-gate=120 zos-upgrade-check=20 console="
        )),
        "{kernel}"
    );
    for (args, needle) in [
        ("init=/bin/sh", "\"init=/bin/sh\""),
        ("zos-debug,rd.break", "\"rd.break\""),
        ("zos-upgrade-gate=1", "zos-upgrade-gate=1"),
        ("zos-upgrade-check=99999999", "zos-upgrade-check=99999999"),
        ("zos-debug,zos-debug", "twice"),
    ] {
        let query = format!("/boot/dev/farms/{}.ipxe?args={args}", farm.id);
        let (s, body) = g.get_json(&query).await;
        assert_eq!(s, 400, "{query}: {body}");
        assert!(error_message(&body).contains(needle), "{query}: {body}");
    }

    // An expired token.
    g.grid.clock.advance(2 * 86_400);
    let (s, body) = g.get_json(&script(token.to_string())).await;
    assert_eq!(s, 403, "{body}");
    assert!(error_message(&body).contains("expired"), "{body}");
}

#[tokio::test]
async fn a_debug_flist_is_taken_on_dev_releases_only() {
    let g = BootGrid::start().await;
    let mut r = g.release("1.0.0").await;

    // Not on the hub: refused like a runtime flist.
    r.debug = Some(RuntimeFlist {
        name: "debug".into(),
        sha256: "d".repeat(64),
        size: 10,
    });
    let (s, body) = g
        .publish("dev", &r.sign(&[&g.dev[0], &g.dev[1]]).unwrap())
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        error_message(&body).contains("not on this grid's hub"),
        "{body}"
    );

    // On the hub: a dev release carries it, and nodes read it from the manifest.
    r.debug = Some(g.flist("debug").await);
    let (s, body) = g
        .publish("dev", &r.sign(&[&g.dev[0], &g.dev[1]]).unwrap())
        .await;
    assert_eq!(s, 201, "{body}");
    let (_, cur) = g.get_json("/releases/dev").await;
    let cur: SignedRelease = serde_json::from_value(cur).unwrap();
    let keys = ReleaseKeys {
        keys: g.dev.iter().map(|i| i.public_key()).collect(),
        threshold: 2,
    };
    assert_eq!(cur.verify_for(&keys, RunMode::Dev).unwrap().debug, r.debug);

    // A prod release carrying one is refused, even signed by prod's key: its manifest is
    // written and signed by hand, since signing checks it too.
    let mut prod = g.release("1.0.0").await;
    prod.runmode = RunMode::Prod;
    prod.debug = r.debug.clone();
    assert!(prod.sign(&[&g.prod]).is_err(), "signing checks the runmode");
    let manifest = serde_json::to_string(&prod).unwrap();
    let signed = SignedRelease {
        signatures: vec![zos_types::release::ReleaseSignature {
            key: g.prod.public_key(),
            signature: g.prod.sign(&zos_types::release::signing_message(&manifest)),
        }],
        manifest,
    };
    let (s, body) = g
        .put_as(
            &g.prod,
            "/releases/prod",
            serde_json::to_vec(&signed).unwrap(),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        error_message(&body).contains("runmode prod carries a debug flist"),
        "{body}"
    );
    let (s, _) = g.get_json("/releases/prod").await;
    assert_eq!(s, 404, "nothing was published on prod");
}
