//! Validated names: channel names and process (child) names.

use std::borrow::Cow;
use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {:?}: {reason}", abbreviate(.name))]
pub struct NameError {
    /// "channel name" or "process name".
    pub what: &'static str,
    /// The name given.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Longest name, key or type name quoted whole in an error message, in bytes.
const SHOWN: usize = 128;

/// `text` as an error message may quote it: whole up to 128 bytes (every valid name
/// fits), otherwise its first 64 characters and its length, so that a message about a
/// huge name stays small.
pub fn abbreviate(text: &str) -> Cow<'_, str> {
    if text.len() <= SHOWN {
        return Cow::Borrowed(text);
    }
    let head: String = text.chars().take(SHOWN / 2).collect();
    Cow::Owned(format!("{head}… ({} bytes)", text.len()))
}

fn check(what: &'static str, name: &str, max: usize, extra: &[char]) -> Result<(), NameError> {
    let fail = |reason| {
        Err(NameError {
            what,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.len() > max {
        return fail("it is too long");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return fail("it must start with a letter or digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || extra.contains(&c))
    {
        return fail("it may contain only ASCII letters, digits and - _ . :");
    }
    Ok(())
}

/// A channel name: 1 to 128 ASCII letters, digits, `-`, `_`, `.` or `:`, starting with a
/// letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(String);

impl ChannelName {
    /// Validates `name`.
    ///
    /// # Errors
    ///
    /// A [`NameError`] saying what is wrong.
    pub fn new(name: &str) -> Result<ChannelName, NameError> {
        check("channel name", name, 128, &['.', ':'])?;
        Ok(ChannelName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A child process name: 1 to 64 ASCII letters, digits, `-` or `_`, starting with a letter
/// or digit. Its channels are `NAME-active` and `NAME-passive`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessName(String);

impl ProcessName {
    /// Validates `name`.
    ///
    /// # Errors
    ///
    /// A [`NameError`] saying what is wrong.
    pub fn new(name: &str) -> Result<ProcessName, NameError> {
        check("process name", name, 64, &[])?;
        Ok(ProcessName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of this child's active channel.
    pub fn active_channel(&self) -> ChannelName {
        ChannelName(format!("{}-active", self.0))
    }

    /// The name of this child's passive channel.
    pub fn passive_channel(&self) -> ChannelName {
        ChannelName(format!("{}-passive", self.0))
    }
}

impl fmt::Display for ProcessName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(ChannelName::new("nonebot-active").is_ok());
        assert!(ChannelName::new("a.b:c_d").is_ok());
        assert!(ChannelName::new("").is_err());
        assert!(ChannelName::new("-x").is_err());
        assert!(ChannelName::new("a b").is_err());
        assert!(ChannelName::new(&"x".repeat(129)).is_err());
        assert!(ProcessName::new("worker_1").is_ok());
        assert!(ProcessName::new("a.b").is_err());
        let p = ProcessName::new("nonebot").unwrap();
        assert_eq!(p.active_channel().as_str(), "nonebot-active");
    }

    #[test]
    fn long_names_are_abbreviated_in_messages() {
        let valid = "x".repeat(128);
        assert_eq!(abbreviate(&valid), valid.as_str());
        let huge = "é".repeat(1 << 20);
        let shown = abbreviate(&huge);
        assert_eq!(shown, format!("{}… (2097152 bytes)", "é".repeat(64)));
        let e = ChannelName::new(&huge).unwrap_err().to_string();
        assert!(e.len() < 256, "{e}");
        assert!(e.ends_with("(2097152 bytes)\": it is too long"), "{e}");
    }
}
