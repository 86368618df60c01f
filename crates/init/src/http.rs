//! The HTTP client zos-init talks to the grid with, and bounded reads.

use std::time::Duration;

/// A client with timeouts and no redirects (a grid that redirects elsewhere is refused).
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("zos-init/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The body of `resp`, refused past `limit` bytes.
pub async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(format!("the answer is larger than {limit} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why asking the grid for something failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot fetch {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the grid answered {status} at {url}")]
    Status { url: String, status: u16 },
    #[error("the answer at {url} is not usable: {reason}")]
    Body { url: String, reason: String },
}

/// `GET url`, answered 200 (anything else is an error naming the status).
pub async fn get_ok(client: &reqwest::Client, url: &str) -> Result<reqwest::Response, FetchError> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|source| FetchError::Http {
            url: url.to_string(),
            source,
        })?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    Ok(resp)
}

/// `GET url`, answered 200 with a body of at most `limit` bytes.
pub async fn get_limited(
    client: &reqwest::Client,
    url: &str,
    limit: usize,
) -> Result<Vec<u8>, FetchError> {
    let resp = get_ok(client, url).await?;
    read_limited(resp, limit)
        .await
        .map_err(|reason| FetchError::Body {
            url: url.to_string(),
            reason,
        })
}
