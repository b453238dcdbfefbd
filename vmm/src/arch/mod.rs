//! x86_64 specifics: guest memory layout, boot protocols, and the initial
//! vCPU state.

pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod paging;
pub mod pvh;
pub mod regs;
