//! Recognising a kernel image before handing it to a VMM: a bzImage (the
//! x86 boot protocol's `HdrS` header, `Documentation/arch/x86/boot.rst`) or
//! an uncompressed x86-64 ELF `vmlinux` (booted through its PVH note).
//! Catching a wrong or truncated file here gives a clear message instead of
//! a VM that never prints anything.

use thiserror::Error;

/// How many bytes of the file [`inspect`] needs to see: the setup header
/// and the version string, which lives in the setup code (at most 64
/// sectors of 512 bytes after the boot sector).
pub const HEADER_BYTES: usize = 0x200 * 65;

/// Offset of the `0xAA55` boot flag.
const BOOT_FLAG_AT: usize = 0x1fe;
/// Offset of the `HdrS` setup header magic.
const HEADER_MAGIC_AT: usize = 0x202;
/// Offset of `kernel_version`: a pointer to the version string, minus 0x200.
const KERNEL_VERSION_AT: usize = 0x20e;
/// ELF `e_machine` for x86-64.
const EM_X86_64: u16 = 0x3e;

/// What kind of image a kernel file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// A compressed kernel with the x86 boot protocol header.
    BzImage,
    /// An uncompressed 64-bit x86 ELF kernel.
    ElfVmlinux,
}

/// What was learnt from the image's first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The format.
    pub kind: ImageKind,
    /// The kernel release (`6.1.0-48-cloud-amd64`) when the image says so;
    /// bzImages do, ELF files only deep inside their data.
    pub version: Option<String>,
}

/// Why a file is not a usable kernel image.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ImageError {
    /// Too short to hold any kernel header.
    #[error("the file is too short to be a kernel ({len} bytes)")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// An ELF file for another architecture or word size.
    #[error("the ELF file is not a 64-bit x86 kernel")]
    WrongElf,
    /// Neither format's magic is present.
    #[error("neither a bzImage (no \"HdrS\" at 0x202) nor an ELF vmlinux")]
    UnknownFormat,
}

/// Identifies the image from its first [`HEADER_BYTES`] bytes (or the whole
/// file when shorter).
pub fn inspect(head: &[u8]) -> Result<ImageInfo, ImageError> {
    if head.starts_with(b"\x7fELF") {
        return inspect_elf(head);
    }
    if head.len() < KERNEL_VERSION_AT + 2 {
        return Err(ImageError::TooShort { len: head.len() });
    }
    let boot_flag = u16::from_le_bytes([head[BOOT_FLAG_AT], head[BOOT_FLAG_AT + 1]]);
    if &head[HEADER_MAGIC_AT..HEADER_MAGIC_AT + 4] != b"HdrS" || boot_flag != 0xaa55 {
        return Err(ImageError::UnknownFormat);
    }
    Ok(ImageInfo {
        kind: ImageKind::BzImage,
        version: bzimage_version(head),
    })
}

fn inspect_elf(head: &[u8]) -> Result<ImageInfo, ImageError> {
    let machine = head
        .get(0x12..0x14)
        .ok_or(ImageError::TooShort { len: head.len() })?;
    let is_64_bit_le = head.get(4..6) == Some(&[2, 1]);
    if !is_64_bit_le || u16::from_le_bytes([machine[0], machine[1]]) != EM_X86_64 {
        return Err(ImageError::WrongElf);
    }
    Ok(ImageInfo {
        kind: ImageKind::ElfVmlinux,
        version: None,
    })
}

/// The release from the string `kernel_version` points at:
/// "6.1.0-48-cloud-amd64 (debian-kernel@…) #1 SMP …" → "6.1.0-48-cloud-amd64".
fn bzimage_version(head: &[u8]) -> Option<String> {
    let pointer = u16::from_le_bytes([head[KERNEL_VERSION_AT], head[KERNEL_VERSION_AT + 1]]);
    if pointer == 0 {
        return None;
    }
    let start = 0x200 + usize::from(pointer);
    let text = head.get(start..)?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    let release = std::str::from_utf8(&text[..end]).ok()?;
    let plausible = !release.is_empty() && release.chars().all(|c| c.is_ascii_graphic());
    plausible.then(|| release.to_owned())
}

/// A minimal bzImage header carrying `version`, for tests.
#[cfg(test)]
pub(crate) fn synthetic_bzimage(version: &str) -> Vec<u8> {
    let mut image = vec![0u8; 0x400];
    image[BOOT_FLAG_AT..BOOT_FLAG_AT + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[HEADER_MAGIC_AT..HEADER_MAGIC_AT + 4].copy_from_slice(b"HdrS");
    let string_at = 0x300usize;
    let pointer = u16::try_from(string_at - 0x200).unwrap();
    image[KERNEL_VERSION_AT..KERNEL_VERSION_AT + 2].copy_from_slice(&pointer.to_le_bytes());
    let text = format!("{version} (builder@example) #1 SMP\0");
    image[string_at..string_at + text.len()].copy_from_slice(text.as_bytes());
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bzimage_is_recognised_with_its_release() {
        let image = synthetic_bzimage("6.1.0-48-cloud-amd64");

        let info = inspect(&image).unwrap();

        assert_eq!(info.kind, ImageKind::BzImage);
        assert_eq!(info.version.as_deref(), Some("6.1.0-48-cloud-amd64"));
    }

    #[test]
    fn bzimage_without_version_pointer_has_no_version() {
        let mut image = synthetic_bzimage("x");
        image[KERNEL_VERSION_AT..KERNEL_VERSION_AT + 2].fill(0);

        let info = inspect(&image).unwrap();

        assert_eq!(info.version, None);
    }

    #[test]
    fn x86_64_elf_is_a_vmlinux() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());

        let info = inspect(&elf).unwrap();

        assert_eq!(info.kind, ImageKind::ElfVmlinux);
    }

    #[test]
    fn arm64_elf_is_rejected() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x12..0x14].copy_from_slice(&0xb7u16.to_le_bytes());

        assert_eq!(inspect(&elf).unwrap_err(), ImageError::WrongElf);
    }

    #[test]
    fn corrupted_header_magic_is_rejected() {
        let mut image = synthetic_bzimage("6.1.0");
        image[HEADER_MAGIC_AT] = b'X';

        assert_eq!(inspect(&image).unwrap_err(), ImageError::UnknownFormat);
    }

    #[test]
    fn truncated_file_is_too_short() {
        let image = synthetic_bzimage("6.1.0");

        assert_eq!(
            inspect(&image[..0x100]).unwrap_err(),
            ImageError::TooShort { len: 0x100 }
        );
    }

    #[test]
    fn text_file_is_unknown_format() {
        let text = "not a kernel\n".repeat(100);

        assert_eq!(
            inspect(text.as_bytes()).unwrap_err(),
            ImageError::UnknownFormat
        );
    }
}
