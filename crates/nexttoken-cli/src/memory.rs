//! Peak resident memory of this process, from Linux's /proc (nothing elsewhere).

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
