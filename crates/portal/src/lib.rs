//! The web portal's files, built from `web/` (Svelte and Vite) by this crate's build script
//! and embedded in the binary, so that `meridian serve` needs nothing beside it.

/// One file of the portal.
#[derive(Debug)]
pub struct Asset {
    /// Path below the portal's root, without a leading `/`.
    pub path: &'static str,
    /// Its media type.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
    /// Its bytes gzip-compressed, for text files worth it.
    pub gzip: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The file at `path` (no leading `/`), if the portal has one.
pub fn get(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn has_an_index() {
        let index = super::get("index.html").expect("index.html");
        assert!(index.content_type.starts_with("text/html"));
        assert!(std::str::from_utf8(index.body).unwrap().contains("<html"));
    }
}
