//! The terminal side of the live view: raw mode and the alternate screen,
//! restored on every way out (a Drop guard for returns and errors, a panic hook
//! for panics, both idempotent), and a thread that reads keys so the event
//! loop never blocks on the terminal.

use std::{
    io::{self, Write},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Once,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use ratatui::crossterm::{
    cursor,
    event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    execute,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};

use crate::outputs::Key;

/// Whether the terminal is in the live view's mode now.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static PANIC_HOOK: Once = Once::new();

/// Leaves raw mode and the alternate screen, shows the cursor. Does nothing
/// when the view is not active, so calling it twice is harmless.
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let mut out = io::stdout();
        let _ = execute!(out, LeaveAlternateScreen, cursor::Show);
        let _ = out.flush();
    }
}

/// Raw mode and the alternate screen for as long as it lives.
pub struct Guard(());

impl Guard {
    /// Enters the live view's terminal mode and makes sure a panic restores it
    /// before the panic message is printed.
    pub fn enter() -> io::Result<Guard> {
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        terminal::enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        let mut out = io::stdout();
        if let Err(e) = execute!(out, EnterAlternateScreen, cursor::Hide) {
            restore();
            return Err(e);
        }
        Ok(Guard(()))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

/// Converts a terminal key event (presses only).
fn key_of(e: event::KeyEvent) -> Option<Key> {
    if e.kind != KeyEventKind::Press {
        return None;
    }
    if e.modifiers.contains(KeyModifiers::CONTROL) && matches!(e.code, KeyCode::Char('c')) {
        return Some(Key::Interrupt);
    }
    Some(match e.code {
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        _ => return None,
    })
}

/// A thread polling the terminal for keys and sending them to the event loop.
pub struct KeyReader {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl KeyReader {
    /// Starts the thread; keys arrive on the returned channel.
    pub fn spawn() -> io::Result<(KeyReader, tokio::sync::mpsc::UnboundedReceiver<Key>)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::Builder::new()
            .name("kmem-trace-keys".into())
            .spawn(move || {
                // Poll with a timeout so the thread notices `stop` promptly.
                while !flag.load(Ordering::Relaxed) {
                    match event::poll(Duration::from_millis(100)) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(_) => break,
                    }
                    let key = match event::read() {
                        Ok(Event::Key(k)) => key_of(k),
                        Ok(Event::Resize(..)) => Some(Key::Resize),
                        Ok(_) => None,
                        Err(_) => break,
                    };
                    if let Some(k) = key {
                        if tx.send(k).is_err() {
                            break;
                        }
                    }
                }
            })?;
        Ok((
            KeyReader {
                stop,
                handle: Some(handle),
            },
            rx,
        ))
    }
}

impl Drop for KeyReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_convert_and_restore_is_idempotent() {
        let k = |code, m| event::KeyEvent::new(code, m);
        assert_eq!(
            key_of(k(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Key::Interrupt)
        );
        assert_eq!(
            key_of(k(KeyCode::Char('q'), KeyModifiers::NONE)),
            Some(Key::Char('q'))
        );
        assert_eq!(
            key_of(k(KeyCode::Down, KeyModifiers::NONE)),
            Some(Key::Down)
        );
        assert_eq!(key_of(k(KeyCode::F(1), KeyModifiers::NONE)), None);
        // Not active: restoring touches nothing (safe from tests and twice).
        restore();
        restore();
        assert!(!ACTIVE.load(Ordering::SeqCst));
    }
}
