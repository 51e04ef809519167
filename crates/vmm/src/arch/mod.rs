//! Architecture-specific machine set-up. Vireo runs x86-64 guests only.

pub mod x86_64;
