//! Command groups, one module each; `main.rs` keeps the flags of the older commands and
//! the dispatch.

pub mod images;
