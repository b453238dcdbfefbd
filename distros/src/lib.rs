//! The distro catalog and root filesystem acquisition.
pub mod catalog;
