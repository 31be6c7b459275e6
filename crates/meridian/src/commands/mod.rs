//! Command groups, one module each; `main.rs` keeps the flags of the older commands and
//! the dispatch.

pub mod alerts;
pub mod cluster;
pub mod image_access;
pub mod images;
pub mod match_tables;
pub mod sky_maps;
pub mod spectra;
pub mod survey_images;
