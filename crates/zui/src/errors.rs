//! The last warnings and errors of each subsystem, kept by a `tracing` layer for the screen.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How many events are kept per subsystem.
pub const PER_SUBSYSTEM: usize = 5;
/// The longest message kept (longer ones are cut, marked with `…`).
pub const MAX_MESSAGE: usize = 300;

/// One warning or error as the screen shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoggedError {
    /// Unix seconds.
    pub at: i64,
    pub subsystem: String,
    /// `ERROR` or `WARN`.
    pub level: String,
    pub message: String,
}

/// The subsystem an event's target belongs to: the crate without its `zos_` prefix
/// (`zos_net::nft` → `net`), or for the agent itself the module (`zosd::uplink` → `uplink`).
pub fn subsystem_of(target: &str) -> String {
    let mut parts = target.split("::");
    let krate = parts.next().unwrap_or(target);
    if krate == "zosd" {
        return parts.next().unwrap_or("zosd").to_string();
    }
    krate.strip_prefix("zos_").unwrap_or(krate).to_string()
}

/// A `tracing` layer keeping the last [`PER_SUBSYSTEM`] warnings and errors of each subsystem;
/// clones share what is kept.
#[derive(Debug, Clone, Default)]
pub struct ErrorLog {
    kept: Arc<Mutex<BTreeMap<String, VecDeque<LoggedError>>>>,
}

impl ErrorLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps one event (the layer calls this; so may anything that wants a line on the screen).
    pub fn record(&self, e: LoggedError) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let q = kept.entry(e.subsystem.clone()).or_default();
        if q.len() == PER_SUBSYSTEM {
            q.pop_front();
        }
        q.push_back(e);
    }

    /// What is kept, oldest first.
    pub fn snapshot(&self) -> Vec<LoggedError> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<LoggedError> = kept.values().flatten().cloned().collect();
        all.sort_by_key(|e| e.at);
        all
    }
}

/// Collects an event's message and fields as `message k=v k=v`.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for ErrorLog {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        let mut message = text.message + &text.fields;
        if message.chars().count() > MAX_MESSAGE {
            message = message.chars().take(MAX_MESSAGE - 1).collect::<String>() + "…";
        }
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.record(LoggedError {
            at,
            subsystem: subsystem_of(event.metadata().target()),
            level: level.to_string(),
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn subsystems_are_crates_or_the_agents_modules() {
        assert_eq!(subsystem_of("zos_net::nft"), "net");
        assert_eq!(subsystem_of("zos_provision"), "provision");
        assert_eq!(subsystem_of("zosd::uplink"), "uplink");
        assert_eq!(subsystem_of("zosd"), "zosd");
        assert_eq!(subsystem_of("hyper::proto"), "hyper");
    }

    #[test]
    fn keeps_the_last_warnings_and_errors_of_each_subsystem() {
        let log = ErrorLog::new();
        let sub = tracing_subscriber::registry().with(log.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(target: "zos_net::x", "not kept");
            for i in 0..7 {
                tracing::error!(target: "zos_net::x", n = i, "link down");
            }
            tracing::warn!(target: "zosd::uplink", error = "refused", "cannot connect");
        });
        let all = log.snapshot();
        assert_eq!(all.len(), PER_SUBSYSTEM + 1, "{all:?}");
        let net: Vec<_> = all.iter().filter(|e| e.subsystem == "net").collect();
        assert_eq!(net.len(), PER_SUBSYSTEM);
        assert_eq!(net[0].message, "link down n=2", "the oldest were dropped");
        assert_eq!(net[4].level, "ERROR");
        let up = all.iter().find(|e| e.subsystem == "uplink").unwrap();
        assert_eq!(up.message, "cannot connect error=refused");
        assert_eq!(up.level, "WARN");
    }
}
