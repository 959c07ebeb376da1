//! Peak resident memory of this process, from Linux's /proc (nothing elsewhere), and keeping
//! that peak down while the weights load.

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, v2 and v3 alike), which libmimalloc-sys
/// does not name: how many milliseconds freed memory stays with the process before it goes
/// back to the kernel (1000 by default in mimalloc v3, which the `mimalloc` crate builds).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Runs `load` with freed memory handed back to the kernel at once. Loading frees a copy of
/// nearly every tensor (the bytes read from the file, a matrix before it is laid out); within
/// mimalloc's delay they piled up beside the model (docs/performance.md, "Memory"). A
/// generation's own steps keep the delay, whose reuse of freed blocks they need: prefill is far
/// slower without it.
pub fn returning_freed_memory<R>(load: impl FnOnce() -> R) -> R {
    let delay = purge_delay();
    set_purge_delay(0);
    let result = load();
    set_purge_delay(delay);
    result
}

fn purge_delay() -> std::ffi::c_long {
    // SAFETY: mimalloc's options are integers it reads and writes atomically, at any time.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
}

fn set_purge_delay(milliseconds: std::ffi::c_long) {
    // SAFETY: as for `purge_delay`.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, milliseconds) }
}

/// Restarts the peak-RSS count from the current RSS (Linux 4.0+), so each benchmark reports
/// its own peak rather than the largest of the whole run.
pub fn reset_peak_rss() {
    // A kernel without the feature keeps the process-wide peak, which is still an upper bound.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak resident set size since start or the last [`reset_peak_rss`].
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_is_mimallocs_option_of_that_number() {
        // Were the number another option's, this would read that option's value.
        let default = std::env::var("MIMALLOC_PURGE_DELAY").map_or(1000, |v| v.parse().unwrap());
        assert_eq!(purge_delay(), default);
        assert_eq!(returning_freed_memory(purge_delay), 0);
        assert_eq!(purge_delay(), default, "restored");
    }
}
