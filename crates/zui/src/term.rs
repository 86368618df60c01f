//! The screen on a terminal: drawn every second, keys switch views and do nothing else.

use std::io;
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};

use crate::draw::{View, draw};
use crate::screen::Screen;

/// How often the screen is drawn again without a key.
pub const REDRAW: Duration = Duration::from_secs(1);

/// Draws what `screen` answers on the terminal until `done` answers true: the alternate screen
/// in raw mode, restored on the way out (and on a panic). Tab, Shift-Tab, ←, → and 1-3 switch
/// views; every other key is ignored. Ctrl-C stays the terminal's signal, not a key: whoever
/// runs the screen (zosd) stops on it as it does without one.
pub fn run(mut screen: impl FnMut() -> Screen, done: impl Fn() -> bool) -> io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    keep_signals();
    let mut view = View::default();
    let result = (|| -> io::Result<()> {
        while !done() {
            let s = screen();
            terminal.draw(|f| draw(f, &s, view))?;
            if event::poll(REDRAW)?
                && let Event::Key(k) = event::read()?
                && k.kind == KeyEventKind::Press
            {
                view = match k.code {
                    KeyCode::Tab | KeyCode::Right => view.next(),
                    KeyCode::BackTab | KeyCode::Left => view.previous(),
                    KeyCode::Char('1') => View::Node,
                    KeyCode::Char('2') => View::Workloads,
                    KeyCode::Char('3') => View::Errors,
                    _ => view,
                };
            }
        }
        Ok(())
    })();
    let restored = ratatui::try_restore();
    result.and(restored)
}

/// Raw mode turns Ctrl-C into a key; this gives it back to the terminal as SIGINT.
fn keep_signals() {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = io::stdin();
    if let Ok(mut t) = tcgetattr(&stdin) {
        t.local_flags.insert(LocalFlags::ISIG);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &t);
    }
}
