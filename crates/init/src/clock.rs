//! The clock, set from the grid: a node has no trusted time source of its own (its hardware
//! clock may be wrong or unset), and signatures, TLS and the grid's signed requests need one.
//!
//! zos-init asks `GET {grid}/api/v1/health` (the grid's `time`, Unix seconds) and sets the
//! system clock when it is off by more than [`MAX_SKEW`]. The grid's second is whole, so its
//! time is taken as the middle of that second, plus half the round trip.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zos_types::registry::Health;

/// How far the local clock may be from the grid's before it is set.
pub const MAX_SKEW: Duration = Duration::from_secs(1);
/// The largest health answer read.
const MAX_BODY: usize = 64 * 1024;

/// Why the clock could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error(transparent)]
    Fetch(#[from] crate::http::FetchError),
    #[error("the grid's health answer at {url} is not usable: {reason}")]
    Answer { url: String, reason: String },
    #[error("cannot set the system clock")]
    Set(#[source] std::io::Error),
}

/// The system clock, behind a seam so tests can watch what would be set.
pub trait Clock {
    fn now(&self) -> SystemTime;
    fn set(&mut self, t: SystemTime) -> std::io::Result<()>;
}

/// `CLOCK_REALTIME`.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn set(&mut self, t: SystemTime) -> std::io::Result<()> {
        let d = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| std::io::Error::other("a time before 1970"))?;
        let ts = nix::sys::time::TimeSpec::new(d.as_secs() as libc::time_t, d.subsec_nanos() as _);
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
            .map_err(std::io::Error::from)
    }
}

/// The grid's time now, from its whole-second `grid_secs` answered `rtt` after asking.
pub fn estimate(grid_secs: i64, rtt: Duration) -> Option<SystemTime> {
    let secs = u64::try_from(grid_secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs) + Duration::from_millis(500) + rtt / 2)
}

/// The time to set, if `local` is more than [`MAX_SKEW`] from `grid`.
pub fn correction(local: SystemTime, grid: SystemTime) -> Option<SystemTime> {
    let skew = match grid.duration_since(local) {
        Ok(ahead) => ahead,
        Err(e) => e.duration(),
    };
    (skew > MAX_SKEW).then_some(grid)
}

/// What [`sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// The clock was within [`MAX_SKEW`].
    Kept { skew_ms: i64 },
    /// The clock was set, `skew_ms` was the correction.
    Set { skew_ms: i64 },
}

fn signed_ms(from: SystemTime, to: SystemTime) -> i64 {
    match to.duration_since(from) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// Asks the grid at `grid` (base URL) for its time.
pub async fn grid_time(
    client: &reqwest::Client,
    grid: &str,
) -> Result<(i64, Duration), ClockError> {
    let url = format!("{}/api/v1/health", grid.trim_end_matches('/'));
    let asked = Instant::now();
    let body = crate::http::get_limited(client, &url, MAX_BODY).await?;
    let rtt = asked.elapsed();
    let health: Health = serde_json::from_slice(&body).map_err(|e| ClockError::Answer {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    Ok((health.time, rtt))
}

/// Sets `clock` from the grid at `grid` when it is off by more than [`MAX_SKEW`].
pub async fn sync(
    client: &reqwest::Client,
    grid: &str,
    clock: &mut dyn Clock,
) -> Result<Synced, ClockError> {
    let (secs, rtt) = grid_time(client, grid).await?;
    let url = format!("{}/api/v1/health", grid.trim_end_matches('/'));
    let grid_now = estimate(secs, rtt).ok_or_else(|| ClockError::Answer {
        url,
        reason: format!("time {secs} is not a time after 1970"),
    })?;
    let local = clock.now();
    let skew_ms = signed_ms(local, grid_now);
    match correction(local, grid_now) {
        Some(t) => {
            clock.set(t).map_err(ClockError::Set)?;
            Ok(Synced::Set { skew_ms })
        }
        None => Ok(Synced::Kept { skew_ms }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_skew_over_a_second_is_corrected() {
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(correction(t, t), None);
        assert_eq!(correction(t, t + Duration::from_millis(999)), None);
        assert_eq!(correction(t + Duration::from_millis(1000), t), None);
        let later = t + Duration::from_millis(1001);
        assert_eq!(correction(t, later), Some(later));
        assert_eq!(correction(later, t), Some(t));
        // A node booting with its clock at 1970 gets the grid's.
        assert_eq!(correction(UNIX_EPOCH, t), Some(t));
    }

    #[test]
    fn the_grid_second_is_taken_at_its_middle_plus_half_the_round_trip() {
        let e = estimate(100, Duration::from_millis(200)).unwrap();
        assert_eq!(e, UNIX_EPOCH + Duration::from_millis(100_600));
        assert_eq!(estimate(-1, Duration::ZERO), None);
    }
}
