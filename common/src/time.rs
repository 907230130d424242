//! The one helper through which every network await gets a deadline.

use std::future::Future;
use std::time::Duration;

use crate::{Error, Result};

/// Awaits `fut` for at most `after`; elapsed time becomes
/// [`Error::Timeout`] naming `what` was being waited for.
///
/// # Errors
/// `Error::Timeout` when the deadline passes, or whatever `fut` returns.
pub async fn deadline<T, F>(after: Duration, what: &'static str, fut: F) -> Result<T>
where
    F: Future<Output = Result<T>>,
{
    match tokio::time::timeout(after, fut).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout { what, after }),
    }
}
