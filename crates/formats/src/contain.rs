//! Panics of dependencies on corrupt input, contained as errors.
//!
//! Some readers of the Arrow project panic, rather than fail, on corrupt input (Parquet's
//! bit-packed decoder asserts a bit width that a corrupt page sets; fuzzing found these).
//! Meridian reads strangers' files with them, so those calls run through [`contain`]: a
//! panic there becomes an error naming the file, and the process (a server busy with other
//! users' requests) goes on. Panics anywhere else are Meridian's own bugs and are not
//! caught.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f`; a panic in it is returned as its message.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    DEPTH.with(|d| d.set(d.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get() - 1));
    result.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// Whether this thread runs inside [`contain`].
pub fn contained() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Wraps the current panic hook so that contained panics are not reported as crashes
/// (neither printed by the default hook nor turned into an abort by a fuzzer's).
pub fn install_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !contained() {
            previous(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_the_depth_is_restored() {
        assert_eq!(contain(|| 3), Ok(3));
        let e = contain(|| -> u8 { panic!("bad width {}", 9) }).unwrap_err();
        assert_eq!(e, "bad width 9");
        assert!(!contained());
        assert_eq!(contain(contained), Ok(true));
    }
}
