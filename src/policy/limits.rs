//! Request body size cap: refused from `Content-Length` before a byte is read, then counted
//! while a body of unknown length streams.

#![deny(clippy::unwrap_used, clippy::expect_used)]

/// What the declared `Content-Length` says about the cap.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    Fits,
    TooLarge,
    Unknown,
    Invalid,
}

pub fn check_declared(content_length: Option<&[u8]>, max: u64) -> Declared {
    let Some(raw) = content_length else {
        return Declared::Unknown;
    };
    match std::str::from_utf8(raw).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(n) if n > max => Declared::TooLarge,
        Some(_) => Declared::Fits,
        None => Declared::Invalid,
    }
}

/// Adds a chunk to the running count; true when the cap is crossed.
#[must_use]
pub fn exceeds(seen: &mut u64, chunk: usize, max: u64) -> bool {
    *seen = seen.saturating_add(chunk as u64);
    *seen > max
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn declared_lengths() {
        assert_eq!(check_declared(Some(b"10"), 10), Declared::Fits);
        assert_eq!(check_declared(Some(b"11"), 10), Declared::TooLarge);
        assert_eq!(check_declared(None, 10), Declared::Unknown);
        assert_eq!(check_declared(Some(b"x"), 10), Declared::Invalid);
    }

    #[test]
    fn streamed_count() {
        let mut seen = 0;
        assert!(!exceeds(&mut seen, 6, 10));
        assert!(exceeds(&mut seen, 6, 10));
    }
}
