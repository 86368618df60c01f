//! The release a node runs: fetched from the grid, verified against the release keys pinned in
//! the initramfs, and its runtime flists fetched and checked against the hashes it names.
//!
//! Refused, with the reason on the console (then zos-init retries with backoff): a release not
//! signed by enough pinned keys (an unknown key does not count), pinned keys with an unusable
//! threshold, a release for another runmode or with a malformed manifest
//! ([`zos_types::release::ReleaseError`]), and a runtime flist whose bytes do not have the
//! SHA-256 and size the manifest names. Nothing of a refused release is kept.
//!
//! The flist is fetched here and not with `zos_flist::hub::fetch_flist`, so PID 1 links no
//! SQLite, FUSE or object-store code; the flist mounter validates the file when it opens it.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zos_types::release::{
    Release, ReleaseError, ReleaseKeys, RunMode, RuntimeFlist, SignedRelease,
};

/// The release keys pinned in the initramfs.
pub const KEYS_PATH: &str = "/etc/zos/release-keys.json";
/// The largest signed release read (manifest, signatures and JSON around them).
pub const MAX_RELEASE_BYTES: usize = 256 * 1024;
/// The largest runtime flist file fetched.
pub const MAX_FLIST_BYTES: u64 = 512 * 1024 * 1024;

/// Why there is no release to run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the pinned release keys {path}")]
    KeysIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the pinned release keys {path} are unusable: {reason}")]
    Keys { path: PathBuf, reason: String },
    #[error(transparent)]
    Fetch(#[from] crate::http::FetchError),
    #[error("the answer at {url} is not a signed release: {reason}")]
    Answer { url: String, reason: String },
    #[error("release refused")]
    Refused(#[from] ReleaseError),
    #[error("runtime flist {name} refused: its SHA-256 is {got}, the release names {expected}")]
    FlistHash {
        name: String,
        expected: String,
        got: String,
    },
    #[error("runtime flist {name} refused: {got} bytes, the release names {expected}")]
    FlistSize {
        name: String,
        expected: u64,
        got: u64,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads and checks the pinned release keys.
pub fn load_keys(path: &Path) -> Result<ReleaseKeys, Error> {
    let text = std::fs::read(path).map_err(|source| Error::KeysIo {
        path: path.to_owned(),
        source,
    })?;
    let keys: ReleaseKeys = serde_json::from_slice(&text).map_err(|e| Error::Keys {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    keys.validate().map_err(|e| Error::Keys {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(keys)
}

/// `GET {grid}/releases/{runmode}`: the current signed release, unverified.
pub async fn fetch(
    client: &reqwest::Client,
    grid: &str,
    runmode: RunMode,
) -> Result<SignedRelease, Error> {
    let url = format!("{}/releases/{runmode}", grid.trim_end_matches('/'));
    let body = crate::http::get_limited(client, &url, MAX_RELEASE_BYTES).await?;
    serde_json::from_slice(&body).map_err(|e| Error::Answer {
        url,
        reason: e.to_string(),
    })
}

/// The current release for `runmode`, verified against `keys`.
pub async fn current(
    client: &reqwest::Client,
    grid: &str,
    keys: &ReleaseKeys,
    runmode: RunMode,
) -> Result<Release, Error> {
    let signed = fetch(client, grid, runmode).await?;
    Ok(signed.verify_for(keys, runmode)?)
}

/// Where the grid's hub serves the flist with SHA-256 `sha256`.
pub fn flist_url(grid: &str, sha256: &str) -> String {
    format!(
        "{}/api/v1/hub/flists/by-hash/{sha256}",
        grid.trim_end_matches('/')
    )
}

/// The grid hub's block store, as `zos-flist-mount --store` takes it.
pub fn hub_blocks_url(grid: &str) -> String {
    format!("{}/api/v1/hub/blocks", grid.trim_end_matches('/'))
}

fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((hex::encode(h.finalize()), n))
}

/// Fetches runtime flist `flist` into `dir` as `<sha256>.fl` and answers its path. The bytes
/// must have the release's SHA-256 and size; a file kept from an earlier boot step is used when
/// it still has them.
pub async fn fetch_flist(
    client: &reqwest::Client,
    grid: &str,
    flist: &RuntimeFlist,
    dir: &Path,
) -> Result<PathBuf, Error> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    let dest = dir.join(format!("{}.fl", flist.sha256));
    if let Ok((hash, size)) = sha256_file(&dest) {
        if hash == flist.sha256 && size == flist.size {
            return Ok(dest);
        }
        let _ = std::fs::remove_file(&dest);
    }
    if flist.size > MAX_FLIST_BYTES {
        return Err(Error::FlistSize {
            name: flist.name.clone(),
            expected: MAX_FLIST_BYTES,
            got: flist.size,
        });
    }
    let url = flist_url(grid, &flist.sha256);
    let mut resp = crate::http::get_ok(client, &url).await?;
    let too_large = |got| Error::FlistSize {
        name: flist.name.clone(),
        expected: flist.size,
        got,
    };
    if let Some(l) = resp.content_length()
        && l > flist.size
    {
        return Err(too_large(l));
    }
    let tmp = dir.join(format!(".{}.fl.part", flist.sha256));
    let mut file = std::fs::File::create(&tmp).map_err(io("cannot create", &tmp))?;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let result = async {
        while let Some(chunk) =
            resp.chunk()
                .await
                .map_err(|source| crate::http::FetchError::Http {
                    url: url.clone(),
                    source,
                })?
        {
            len += chunk.len() as u64;
            if len > flist.size {
                return Err(too_large(len));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(io("cannot write", &tmp))?;
        }
        if len != flist.size {
            return Err(too_large(len));
        }
        let got = hex::encode(hasher.finalize());
        if got != flist.sha256 {
            return Err(Error::FlistHash {
                name: flist.name.clone(),
                expected: flist.sha256.clone(),
                got,
            });
        }
        file.sync_all().map_err(io("cannot flush", &tmp))?;
        std::fs::rename(&tmp, &dest).map_err(io("cannot keep the flist as", &dest))
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_types::identity::Identity;

    #[test]
    fn grid_urls() {
        assert_eq!(
            flist_url("http://g:8080/", &"a".repeat(64)),
            format!("http://g:8080/api/v1/hub/flists/by-hash/{}", "a".repeat(64))
        );
        assert_eq!(
            hub_blocks_url("http://g:8080"),
            "http://g:8080/api/v1/hub/blocks"
        );
    }

    #[test]
    fn pinned_keys_must_be_usable() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keys.json");
        let e = load_keys(&p).unwrap_err().to_string();
        assert!(e.contains("cannot read the pinned release keys"), "{e}");
        std::fs::write(&p, "{\"keys\": [], \"threshold\": 1}").unwrap();
        let e = load_keys(&p).unwrap_err().to_string();
        assert!(e.contains("threshold 1 of 0 keys"), "{e}");
        std::fs::write(&p, "not json").unwrap();
        assert!(load_keys(&p).unwrap_err().to_string().contains("unusable"));
        let id = Identity::generate().unwrap();
        let keys = ReleaseKeys {
            keys: vec![id.public_key()],
            threshold: 1,
        };
        std::fs::write(&p, serde_json::to_vec(&keys).unwrap()).unwrap();
        assert_eq!(load_keys(&p).unwrap(), keys);
    }
}
