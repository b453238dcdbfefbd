//! The distro catalog: where each distribution's root filesystem comes from.
//! The catalog files and download code arrive with the complete CLI.
