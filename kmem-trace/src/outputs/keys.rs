//! Keys of the live view, independent of the terminal library, and the
//! channel that carries them from the key reader thread
//! (`outputs::tui::term`) to the event loop (`watch::run_interactive`), which
//! hands each to [`super::Output::key`].

/// A key, independent of the terminal library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    Up,
    Down,
    /// Ctrl-C (raw mode turns it into a key, not a signal).
    Interrupt,
    /// The terminal changed size.
    Resize,
}

/// Keys read from the terminal by another thread.
pub type Keys = tokio::sync::mpsc::UnboundedReceiver<Key>;
