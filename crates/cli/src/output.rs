//! Printing results: aligned tables for people, JSON or YAML for scripts (`--output`), with
//! colours only on a terminal without `NO_COLOR`, and times both relative and absolute.
//!
//! Everything goes to stdout through [`outln!`] and [`out!`], which return the write's error
//! instead of panicking as `println!` does: a closed stdout (`zos node list | head -1`) ends
//! the command with a broken pipe error, which `main` turns into a quiet exit 0.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned tables and key-value lines, for people.
    #[default]
    Table,
    Json,
    Yaml,
}

impl Format {
    /// The format named `s` (`table`, `json`, `yaml`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "table" => Some(Self::Table),
            "json" => Some(Self::Json),
            "yaml" => Some(Self::Yaml),
            _ => None,
        }
    }
}

static FORMAT: OnceLock<Format> = OnceLock::new();

/// Chooses the format of this run (once, from the global options).
pub fn set_format(f: Format) {
    let _ = FORMAT.set(f);
}

/// The format of this run.
pub fn format() -> Format {
    FORMAT.get().copied().unwrap_or_default()
}

/// `println!` that returns the `io::Result` of the write instead of panicking on it.
macro_rules! outln {
    () => {
        $crate::output::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}
/// `print!` that returns the `io::Result` of the write instead of panicking on it.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!($($arg)*))
    };
}
pub(crate) use {out, outln};

/// Writes to stdout, returning the error (a broken pipe among them).
pub fn write_out(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_fmt(args)?;
    o.flush()
}

/// True when `e` (or one of its causes) is a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Prints `value` for scripts: pretty JSON, or YAML with `--output yaml`. Unix times in fields
/// named `*_at`, `last_seen`, `updated` or `time` are written as RFC 3339 UTC strings.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(value)?;
    rfc3339_times(&mut v);
    match format() {
        Format::Yaml => out!("{}", serde_saphyr::to_string(&v)?)?,
        Format::Json | Format::Table => outln!("{}", serde_json::to_string_pretty(&v)?)?,
    }
    Ok(())
}

/// True for the names of fields that hold a unix time in seconds.
fn is_time_field(name: &str) -> bool {
    name.ends_with("_at") || matches!(name, "last_seen" | "updated" | "time")
}

/// Rewrites unix times (integers in time fields) as RFC 3339 strings, everywhere in `v`.
fn rfc3339_times(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, field) in map.iter_mut() {
                match field.as_i64() {
                    Some(t) if is_time_field(k) => *field = Value::String(rfc3339(t)),
                    _ => rfc3339_times(field),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rfc3339_times),
        _ => {}
    }
}

/// `t` (unix seconds) as RFC 3339 UTC, e.g. `2026-12-07T12:31:05Z`.
pub fn rfc3339(t: i64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0).unsigned_abs());
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `secs` seconds as people read them: `45s`, `3m`, `5h`, `2d`.
fn span(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// Time `t` relative to `now`: `3m ago`, `in 2h`, `just now`.
pub fn relative(t: i64, now: i64) -> String {
    match now - t {
        0 => "just now".into(),
        d if d > 0 => format!("{} ago", span(d.unsigned_abs())),
        d => format!("in {}", span(d.unsigned_abs())),
    }
}

/// Time `t` for tables: relative and absolute, `3m ago (2026-12-07 12:31:05 UTC)`.
pub fn when(t: i64) -> String {
    when_at(t, zos_types::auth::unix_now())
}

fn when_at(t: i64, now: i64) -> String {
    let abs = rfc3339(t).replace('T', " ").replace('Z', " UTC");
    format!("{} ({abs})", relative(t, now))
}

/// An optional time for tables: [`when`], or `never`.
pub fn when_opt(t: Option<i64>) -> String {
    t.map_or_else(|| "never".into(), when)
}

/// Whether to colour stdout: a terminal, and `NO_COLOR` unset (or empty).
pub fn colour() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
    })
}

/// `text` in the colour that says what it means (states such as online, ok, error), when
/// colouring is on.
fn paint(text: &str, padded: String) -> String {
    if !colour() {
        return padded;
    }
    let code = match text {
        "online" | "ok" | "created" | "up" | "yes" => "32",
        "offline" | "error" | "deleted" | "down" => "31",
        "limited" | "paused" | "init" | "gracePeriod" | "grace_period" | "grace" => "33",
        _ => return padded,
    };
    format!("\x1b[{code}m{padded}\x1b[0m")
}

/// A table header in bold, when colouring is on.
fn bold(padded: String) -> String {
    if colour() {
        format!("\x1b[1m{padded}\x1b[0m")
    } else {
        padded
    }
}

/// `--watch` and `--every SECS`, for commands that show something that changes.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Watch {
    /// Show it again every --every seconds, until Ctrl-C.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Seconds between two renders with --watch.
    #[arg(long, value_name = "SECS", default_value_t = 2, requires = "watch",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub every: u64,
}

/// Runs `render` once, or with `--watch` again every `--every` seconds until SIGINT (Ctrl-C)
/// or SIGTERM, which end the command with success. On a terminal each render replaces the
/// previous one; otherwise renders follow each other (YAML documents separated by `---`).
pub async fn watch<F, Fut>(w: Watch, what: &str, mut render: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    if !w.watch {
        return render().await;
    }
    use tokio::signal::unix::{SignalKind, signal};
    // Listening before the first render: a Ctrl-C at any moment ends the loop cleanly.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let terminal = std::io::stdout().is_terminal();
    for n in 0u64.. {
        if terminal {
            let now = rfc3339(zos_types::auth::unix_now())
                .replace('T', " ")
                .replace('Z', " UTC");
            out!("\x1b[H\x1b[2J")?;
            outln!("every {}s: {what}    {now}\n", w.every)?;
        } else if format() == Format::Yaml {
            outln!("---")?;
        } else if n > 0 {
            outln!()?;
        }
        tokio::select! {
            r = render() => r?,
            _ = int.recv() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(w.every)) => {}
            _ = int.recv() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
    }
    Ok(())
}

/// A table printed with columns aligned to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut width = vec![0; cols];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for (n, r) in std::iter::once(&self.header).chain(&self.rows).enumerate() {
            let last = r.len().min(cols).saturating_sub(1);
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .take(cols)
                .map(|(i, c)| {
                    // The last cell is not padded: lines end without blanks.
                    let padded = if i == last {
                        c.clone()
                    } else {
                        format!("{c:<w$}", w = width[i])
                    };
                    if n == 0 {
                        bold(padded)
                    } else {
                        paint(c, padded)
                    }
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) -> std::io::Result<()> {
        out!("{}", self.render())
    }
}

/// Key-value lines for one object.
pub fn fields(pairs: &[(&str, String)]) -> std::io::Result<()> {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in pairs {
        outln!("{k:<w$}  {v}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let mut t = Table::new(&["ID", "NAME"]);
        t.row(vec!["1".into(), "alpha".into()]);
        t.row(vec!["100".into(), "b".into()]);
        assert_eq!(t.render(), "ID   NAME\n1    alpha\n100  b\n");
    }

    #[test]
    fn times_relative_and_absolute() {
        let t = 1_796_646_665; // 2026-12-07 12:31:05 UTC
        assert_eq!(rfc3339(t), "2026-12-07T12:31:05Z");
        assert_eq!(when_at(t, t + 180), "3m ago (2026-12-07 12:31:05 UTC)");
        assert_eq!(relative(t, t), "just now");
        assert_eq!(relative(t, t - 7200), "in 2h");
        assert_eq!(relative(t, t + 3 * 86400 + 5), "3d ago");
    }

    #[test]
    fn times_in_data_become_rfc3339() {
        let mut v = serde_json::json!({"id": 3, "created_at": 0, "nodes": [{"last_seen": 60}], "time_x": 5});
        rfc3339_times(&mut v);
        assert_eq!(v["created_at"], "1970-01-01T00:00:00Z");
        assert_eq!(v["nodes"][0]["last_seen"], "1970-01-01T00:01:00Z");
        assert_eq!(v["id"], 3);
        assert_eq!(v["time_x"], 5);
    }
}
