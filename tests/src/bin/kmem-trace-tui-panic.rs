//! Test helper for `tests/live_view.rs`: enters the live view's terminal mode
//! (raw mode, alternate screen) exactly as `watch` does, draws a frame, then
//! panics, so the test can check the panic hook restored the terminal.

use kmem_trace::outputs::{tui::TuiOutput, Clock, HookLabels, Output, Status};

fn main() {
    let mut out =
        TuiOutput::enter(Clock::measure(), HookLabels::new()).expect("entering the live view");
    out.status(&Status {
        counts: Default::default(),
        drops: 0,
        hook_family: "test".into(),
        elapsed_s: 0.0,
        forecast: None,
    })
    .expect("drawing");
    std::thread::sleep(std::time::Duration::from_millis(500));
    panic!("deliberate panic inside the live view");
}
