//! `zos release`: release keys, and publishing and listing the node OS releases a grid serves
//! (docs/boot.md). Publishing signs with release keys (`key=` requests), not with a twin.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use clap::Subcommand;
use zos_types::Identity;
use zos_types::auth::{RequestAuth, Signer, unix_now};
use zos_types::boot::{Published, ReleaseSummary, StoredFile};
use zos_types::release::{
    Artifact, Release, ReleaseKeys, RunMode, RuntimeFlist, SignedRelease, Version, is_sha256_hex,
};

use crate::global::{Global, grid_url};
use crate::output::{self, Table, outln};

#[derive(Debug, Subcommand)]
pub enum ReleaseCmd {
    /// Make a release key (ed25519) in FILE (mode 0600); prints its public key.
    Keygen {
        /// The key file to write. (Here `-o/--output` names this file, not the output format:
        /// use --json for a summary scripts read.)
        #[arg(short, long, id = "output", value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
        output: String,
    },
    /// Print the release keys JSON a grid (`zos-grid serve --release-keys RUNMODE=FILE`) and a
    /// node image pin: the public keys of these key files and how many must sign.
    Keys {
        /// Release key files.
        #[arg(required = true)]
        keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        threshold: usize,
    },
    /// Upload a kernel and an initramfs, sign a release naming them and the runtime flists,
    /// and publish it on the grid as the runmode's current release.
    Publish {
        #[arg(long)]
        runmode: RunMode,
        /// The kernel (bzImage) nodes boot.
        #[arg(long)]
        kernel: PathBuf,
        /// The initramfs holding zos-init.
        #[arg(long)]
        initramfs: PathBuf,
        /// A runtime flist, NAME=URL@SHA256: fetched from URL (or read, for a path) and checked
        /// against SHA256; it must be on the grid's hub. NAME=@SHA256 takes it from the hub.
        /// Repeat for each.
        #[arg(long = "flist", required = true, value_name = "NAME=URL@SHA256")]
        flists: Vec<String>,
        /// A release key file to sign with; repeat up to the grid's threshold. The first one
        /// signs the uploads.
        #[arg(long = "release-key", required = true, value_name = "FILE")]
        release_keys: Vec<PathBuf>,
        /// The release's version (default: the current one's next patch, or 0.1.0).
        #[arg(long, value_name = "X.Y.Z")]
        release_version: Option<String>,
    },
    /// The releases of a runmode on the grid, newest first.
    List {
        #[arg(long)]
        runmode: RunMode,
    },
}

pub async fn release(cmd: ReleaseCmd, g: &Global) -> anyhow::Result<()> {
    match cmd {
        ReleaseCmd::Keygen { output } => keygen(Path::new(&output), g),
        ReleaseCmd::Keys { keys, threshold } => {
            let keys = ReleaseKeys {
                keys: keys
                    .iter()
                    .map(|k| load(k).map(|id| id.public_key()))
                    .collect::<anyhow::Result<_>>()?,
                threshold,
            };
            keys.validate()?;
            output::json(&keys)
        }
        ReleaseCmd::Publish {
            runmode,
            kernel,
            initramfs,
            flists,
            release_keys,
            release_version,
        } => {
            let keys = release_keys
                .iter()
                .map(|k| load(k))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let grid = Grid::new(g)?;
            publish(
                &grid,
                g,
                runmode,
                &kernel,
                &initramfs,
                &flists,
                &keys,
                release_version,
            )
            .await
        }
        ReleaseCmd::List { runmode } => {
            let grid = Grid::new(g)?;
            let list: Vec<ReleaseSummary> = grid
                .get_json(&format!("/releases?runmode={runmode}"))
                .await?;
            if g.structured() {
                return output::json(&list);
            }
            let mut t = Table::new(&[
                "VERSION",
                "CREATED",
                "KERNEL",
                "INITRAMFS",
                "FLISTS",
                "SIGNERS",
            ]);
            for s in &list {
                let r = &s.release;
                t.row(vec![
                    r.version.clone(),
                    r.created.to_string(),
                    short(&r.kernel.sha256),
                    short(&r.initramfs.sha256),
                    r.flists
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    s.signers.len().to_string(),
                ]);
            }
            if list.is_empty() {
                outln!("no releases of runmode {runmode} on this grid")?;
            } else {
                t.print()?;
            }
            Ok(())
        }
    }
}

fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

fn load(path: &Path) -> anyhow::Result<Identity> {
    zos_client::keyfile::load_identity(path)
        .with_context(|| format!("cannot read release key {}", path.display()))
}

fn keygen(out: &Path, g: &Global) -> anyhow::Result<()> {
    if out.exists() {
        bail!(
            "{} exists: a release key is never overwritten; choose another file",
            out.display()
        );
    }
    let id = Identity::generate()?;
    zos_client::keyfile::save_identity(out, &id, 0o600)?;
    if g.structured() {
        return output::json(&serde_json::json!({
            "file": out, "public_key": id.public_key()
        }));
    }
    outln!(
        "release key {} written to {}",
        id.public_key(),
        out.display()
    )?;
    Ok(())
}

/// The grid's boot service over HTTP.
struct Grid {
    base: String,
    http: reqwest::Client,
}

impl Grid {
    fn new(g: &Global) -> anyhow::Result<Self> {
        let base = grid_url(g)?.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(600))
            .build()?;
        Ok(Self { base, http })
    }

    /// The path (and query) the grid sees for `route`, which its signature covers.
    fn signed_path(&self, route: &str) -> anyhow::Result<String> {
        let url = reqwest::Url::parse(&format!("{}{route}", self.base))
            .with_context(|| format!("{}{route} is not a URL", self.base))?;
        Ok(match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        })
    }

    async fn answer<T: serde::de::DeserializeOwned>(
        what: &str,
        resp: reqwest::Response,
    ) -> anyhow::Result<T> {
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{what}: the grid answered {status}: {msg}");
        }
        serde_json::from_slice(&bytes).with_context(|| format!("{what}: unexpected answer"))
    }

    /// Sends `req`; an error only when the grid cannot be reached.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        req.send()
            .await
            .with_context(|| format!("cannot reach the grid at {}", self.base))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, route: &str) -> anyhow::Result<T> {
        let resp = self
            .send(self.http.get(format!("{}{route}", self.base)))
            .await?;
        Self::answer(&format!("GET {route}"), resp).await
    }

    /// `GET route`: None when the grid answers 404.
    async fn get_opt<T: serde::de::DeserializeOwned>(
        &self,
        route: &str,
    ) -> anyhow::Result<Option<T>> {
        let resp = self
            .send(self.http.get(format!("{}{route}", self.base)))
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::answer(&format!("GET {route}"), resp).await.map(Some)
    }

    async fn has(&self, route: &str) -> anyhow::Result<bool> {
        let resp = self
            .send(self.http.head(format!("{}{route}", self.base)))
            .await?;
        Ok(resp.status().is_success())
    }

    async fn put<T: serde::de::DeserializeOwned>(
        &self,
        route: &str,
        body: Vec<u8>,
        key: &Identity,
    ) -> anyhow::Result<T> {
        let path = self.signed_path(route)?;
        let auth = RequestAuth::sign(
            key,
            Signer::Key(key.public_key()),
            "PUT",
            &path,
            unix_now(),
            &body,
        );
        let req = self
            .http
            .put(format!("{}{route}", self.base))
            .header(zos_types::auth::HEADER, auth.to_string())
            .body(body);
        let resp = self.send(req).await?;
        Self::answer(&format!("PUT {route}"), resp).await
    }
}

/// Reads a file and uploads it as a boot file unless the grid has it.
async fn upload(grid: &Grid, what: &str, file: &Path, key: &Identity) -> anyhow::Result<Artifact> {
    let data = std::fs::read(file)
        .with_context(|| format!("cannot read the {what} {}", file.display()))?;
    ensure!(!data.is_empty(), "the {what} {} is empty", file.display());
    let sha256 = zos_flist::hub::sha256_hex(&data);
    let size = data.len() as u64;
    let route = format!("/boot/files/{sha256}");
    if grid.has(&route).await? {
        eprintln!("{what} {sha256} ({size} bytes) is on the grid already");
    } else {
        let stored: StoredFile = grid.put(&route, data, key).await?;
        eprintln!("{what} {} ({} bytes) uploaded", stored.sha256, stored.size);
    }
    Ok(Artifact { sha256, size })
}

/// A `NAME=URL@SHA256` flist: fetched (or read) and checked against its hash.
async fn flist(grid: &Grid, spec: &str) -> anyhow::Result<RuntimeFlist> {
    let bad = || {
        anyhow::anyhow!("--flist {spec:?}: write NAME=URL@SHA256 (or NAME=@SHA256 for the hub's)")
    };
    let (name, rest) = spec.split_once('=').ok_or_else(bad)?;
    let (url, sha256) = rest.rsplit_once('@').ok_or_else(bad)?;
    let sha256 = sha256.to_ascii_lowercase();
    ensure!(
        is_sha256_hex(&sha256),
        "--flist {spec:?}: {sha256:?} is not a SHA-256"
    );
    let url = if url.is_empty() {
        format!("{}/api/v1/hub/flists/by-hash/{sha256}", grid.base)
    } else {
        url.to_string()
    };
    let data = if url.starts_with("http://") || url.starts_with("https://") {
        let resp = grid
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("cannot fetch flist {name} from {url}"))?;
        ensure!(
            resp.status().is_success(),
            "flist {name}: {url} answered {}",
            resp.status()
        );
        resp.bytes().await?.to_vec()
    } else {
        std::fs::read(&url).with_context(|| format!("cannot read flist {name} at {url}"))?
    };
    let got = zos_flist::hub::sha256_hex(&data);
    ensure!(
        got == sha256,
        "flist {name}: {url} has SHA-256 {got}, not {sha256}: refusing to name it in a release"
    );
    Ok(RuntimeFlist {
        name: name.to_string(),
        sha256,
        size: data.len() as u64,
    })
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    grid: &Grid,
    g: &Global,
    runmode: RunMode,
    kernel: &Path,
    initramfs: &Path,
    flist_specs: &[String],
    keys: &[Identity],
    version: Option<String>,
) -> anyhow::Result<()> {
    let uploader = &keys[0];
    let version = match version {
        Some(v) => {
            v.parse::<Version>()?;
            v
        }
        None => {
            let current: Option<SignedRelease> =
                grid.get_opt(&format!("/releases/{runmode}")).await?;
            match current {
                Some(c) => {
                    let r: Release = serde_json::from_str(&c.manifest)
                        .context("the grid's current release is not a release")?;
                    let v = r.version()?;
                    Version(v.0, v.1, v.2 + 1).to_string()
                }
                None => "0.1.0".into(),
            }
        }
    };
    let mut flists = Vec::new();
    for spec in flist_specs {
        flists.push(flist(grid, spec).await?);
    }
    let kernel = upload(grid, "kernel", kernel, uploader).await?;
    let initramfs = upload(grid, "initramfs", initramfs, uploader).await?;
    let release = Release {
        version,
        runmode,
        created: unix_now(),
        kernel,
        initramfs,
        flists,
    };
    let signed = release.sign(&keys.iter().collect::<Vec<_>>())?;
    let published: Published = grid
        .put(
            &format!("/releases/{runmode}"),
            serde_json::to_vec(&signed)?,
            uploader,
        )
        .await?;
    if g.structured() {
        return output::json(&published);
    }
    if published.published {
        outln!(
            "release {} of runmode {runmode} published",
            published.version
        )?;
    } else {
        outln!(
            "release {} of runmode {runmode} was published already",
            published.version
        )?;
    }
    Ok(())
}
