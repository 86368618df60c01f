//! How a zmachine names its flist: a full URL, or a reference to a flist published on the
//! grid's hub, `TWIN/NAME` (twin TWIN's flist NAME, e.g. `1/web.fl`) or just `NAME` (one of the
//! deployment owner's own). A reference stays in the deployment as signed; the node resolves it
//! against the hub of the grid it uses ([`FlistRef::url`]), so what it fetches is a URL.

use crate::TwinId;

/// Most bytes in a flist name on the hub.
pub const MAX_FLIST_NAME_LEN: usize = 128;

/// Path of the hub's flists under a grid's URL: `<grid>/api/v1/hub/flists/<twin>/<name>`.
pub const HUB_FLISTS_PATH: &str = "/api/v1/hub/flists";

/// Checks a flist name on the hub: 1 to [`MAX_FLIST_NAME_LEN`] bytes of ASCII letters, digits,
/// `.`, `_` and `-`, starting with a letter or digit. The reason is returned when it breaks a
/// rule.
pub fn check_flist_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_FLIST_NAME_LEN {
        return Err(format!(
            "flist name {name:?} must be 1 to {MAX_FLIST_NAME_LEN} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "flist name {name:?} may only hold ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!(
            "flist name {name:?} must start with a letter or a digit"
        ));
    }
    Ok(())
}

/// A zmachine's `flist` field, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlistRef<'a> {
    /// A full URL (`http://`, `https://`, `file://`), used as it is.
    Url(&'a str),
    /// A flist on the grid's hub: of `twin`, or of the deployment's owner when `None`.
    Hub { twin: Option<TwinId>, name: &'a str },
}

impl<'a> FlistRef<'a> {
    /// Parses a `flist` field; the error says which forms are accepted.
    pub fn parse(s: &'a str) -> Result<Self, String> {
        if ["http://", "https://", "file://"]
            .iter()
            .any(|p| s.starts_with(p))
        {
            return Ok(Self::Url(s));
        }
        let forms = "a flist is a URL (http:// or https://), TWIN/NAME of a flist on the grid's \
                     hub (e.g. 1/web.fl) or NAME of one of your own";
        let (twin, name) = match s.split_once('/') {
            None => (None, s),
            Some((t, n)) => {
                let twin = (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| t.parse::<TwinId>().ok())
                    .flatten()
                    .filter(|t| *t != 0)
                    .ok_or_else(|| format!("{s:?}: {t:?} is not a twin id; {forms}"))?;
                (Some(twin), n)
            }
        };
        check_flist_name(name).map_err(|e| format!("{s:?}: {e}; {forms}"))?;
        Ok(Self::Hub { twin, name })
    }

    /// The URL this names on the hub of the grid at `grid` (its base URL), for a deployment of
    /// twin `owner`.
    pub fn url(&self, grid: &str, owner: TwinId) -> String {
        match *self {
            Self::Url(u) => u.to_string(),
            Self::Hub { twin, name } => format!(
                "{}{HUB_FLISTS_PATH}/{}/{name}",
                grid.trim_end_matches('/'),
                twin.unwrap_or(owner)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_parse_and_resolve_on_the_hub() {
        let grid = "http://10.213.1.1:8080/";
        let own = FlistRef::parse("web.fl").unwrap();
        assert_eq!(
            own,
            FlistRef::Hub {
                twin: None,
                name: "web.fl"
            }
        );
        assert_eq!(
            own.url(grid, 7),
            "http://10.213.1.1:8080/api/v1/hub/flists/7/web.fl"
        );
        let other = FlistRef::parse("1/web.fl").unwrap();
        assert_eq!(
            other,
            FlistRef::Hub {
                twin: Some(1),
                name: "web.fl"
            }
        );
        assert_eq!(
            other.url(grid, 7),
            "http://10.213.1.1:8080/api/v1/hub/flists/1/web.fl"
        );
        let url = "https://hub.example/x/alpine.fl";
        assert_eq!(FlistRef::parse(url).unwrap(), FlistRef::Url(url));
        assert_eq!(FlistRef::parse(url).unwrap().url(grid, 7), url);
    }

    #[test]
    fn anything_else_is_refused_with_the_forms() {
        for bad in [
            "",
            "/",
            "1/",
            "/web.fl",
            "x/web.fl",
            "0/web.fl",
            "+1/web.fl",
            "99999999999/a",
            "1/a/b",
            "1/.hidden",
            "-x",
            "a b",
            "/tmp/app.fl",
            "ftp://h/a.fl",
            "web.fl/",
        ] {
            let e = FlistRef::parse(bad).unwrap_err();
            assert!(e.contains("TWIN/NAME"), "{bad:?}: {e}");
        }
        let long = "a".repeat(MAX_FLIST_NAME_LEN + 1);
        assert!(FlistRef::parse(&long).is_err());
        assert!(FlistRef::parse(&"a".repeat(MAX_FLIST_NAME_LEN)).is_ok());
    }
}
