//! Java-style `key=value` properties files (`hats.properties`, `collection.properties`).

use std::path::Path;

use crate::{Error, Result};

/// An ordered set of properties.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    entries: Vec<(String, String)>,
}

impl Properties {
    /// Reads a properties file; `#` and `!` start comments.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok(Self::parse(&text))
    }

    /// Parses properties text.
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
            .filter_map(|l| {
                let (k, v) = l.split_once(['=', ':'])?;
                Some((k.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        Self { entries }
    }

    /// Value of a key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets a key, keeping its position if present.
    pub fn set(&mut self, key: &str, value: impl ToString) {
        let value = value.to_string();
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }

    /// Entries in order.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// The text of the file, with a leading comment line.
    pub fn to_text(&self, comment: &str) -> String {
        let mut s = format!("#{comment}\n");
        for (k, v) in &self.entries {
            s.push_str(k);
            s.push('=');
            s.push_str(v);
            s.push('\n');
        }
        s
    }

    /// Writes the file (the caller writes into a staging directory published atomically).
    pub fn write(&self, path: &Path, comment: &str) -> Result<()> {
        std::fs::write(path, self.to_text(comment)).map_err(|e| Error::io(path, e))
    }
}
