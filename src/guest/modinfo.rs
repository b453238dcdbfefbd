//! The `.modinfo` section of a kernel module: NUL-separated `key=value`
//! strings (`name=`, `depends=`, `vermagic=`…) stored in the module's ELF
//! file. Only the ELF64 little-endian section table is read (layout from
//! the System V ABI, `include/uapi/linux/elf.h`), which is all a module for
//! x86-64 needs.

use thiserror::Error;

/// `\x7fELF`.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// `EI_CLASS` value for 64-bit objects.
const ELFCLASS64: u8 = 2;
/// `EI_DATA` value for little-endian objects.
const ELFDATA2LSB: u8 = 1;
/// Size of the ELF64 file header.
const EHDR_SIZE: usize = 64;
/// Size of one ELF64 section header.
const SHDR_SIZE: usize = 64;
/// `e_shstrndx` value meaning "the index is in section 0's `sh_link`".
const SHN_XINDEX: u16 = 0xffff;
/// `sh_type` of a section that occupies no bytes in the file.
const SHT_NOBITS: u32 = 8;
/// The section holding the module's metadata.
const MODINFO_SECTION: &[u8] = b".modinfo";

/// Failure to read a module's metadata.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ModinfoError {
    /// Not a 64-bit little-endian ELF file.
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64,
    /// A header or section points outside the file.
    #[error("ELF {what} lies outside the file")]
    OutOfBounds {
        /// Which structure.
        what: &'static str,
    },
    /// There is no `.modinfo` section.
    #[error("no .modinfo section")]
    NoModinfo,
}

/// The metadata init and the initramfs builder need from a module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=`: the module's name as the kernel knows it (absent in old
    /// kernels, where the file name stands in).
    pub name: Option<String>,
    /// `depends=`: modules that must be loaded first.
    pub depends: Vec<String>,
}

/// Reads the `.modinfo` section of a module's (decompressed) ELF image.
pub fn parse(elf: &[u8]) -> Result<ModInfo, ModinfoError> {
    let section = modinfo_section(elf)?;
    let mut info = ModInfo::default();
    for entry in section.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        let entry = String::from_utf8_lossy(entry);
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        match key {
            "name" => info.name = Some(value.to_owned()),
            "depends" => info.depends.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned),
            ),
            _ => {}
        }
    }
    Ok(info)
}

fn modinfo_section(elf: &[u8]) -> Result<&[u8], ModinfoError> {
    let ident = elf.get(..EHDR_SIZE).ok_or(ModinfoError::NotElf64)?;
    if &ident[..4] != ELF_MAGIC || ident[4] != ELFCLASS64 || ident[5] != ELFDATA2LSB {
        return Err(ModinfoError::NotElf64);
    }
    let shoff = read_u64(elf, 0x28)?;
    let shentsize = usize::from(read_u16(elf, 0x3a)?);
    let mut shnum = u64::from(read_u16(elf, 0x3c)?);
    let mut shstrndx = u64::from(read_u16(elf, 0x3e)?);
    if shentsize < SHDR_SIZE {
        return Err(ModinfoError::OutOfBounds {
            what: "section header size",
        });
    }
    let header = |index: u64| -> Result<SectionHeader, ModinfoError> {
        let at = index
            .checked_mul(shentsize as u64)
            .and_then(|o| o.checked_add(shoff))
            .and_then(|o| usize::try_from(o).ok())
            .ok_or(ModinfoError::OutOfBounds {
                what: "section header",
            })?;
        SectionHeader::read(elf, at)
    };
    // Extended numbering: counts too large for 16 bits live in section 0.
    if shnum == 0 && shoff != 0 {
        shnum = header(0)?.size;
    }
    if shstrndx == u64::from(SHN_XINDEX) {
        shstrndx = u64::from(header(0)?.link);
    }
    if shstrndx >= shnum {
        return Err(ModinfoError::OutOfBounds {
            what: "section name table",
        });
    }
    let names = header(shstrndx)?.contents(elf)?;
    for index in 1..shnum {
        let section = header(index)?;
        let name = usize::try_from(section.name)
            .ok()
            .and_then(|start| names.get(start..))
            .and_then(|rest| rest.split(|&b| b == 0).next())
            .ok_or(ModinfoError::OutOfBounds {
                what: "section name",
            })?;
        if name == MODINFO_SECTION {
            return section.contents(elf);
        }
    }
    Err(ModinfoError::NoModinfo)
}

/// The fields of an ELF64 section header this parser uses.
struct SectionHeader {
    name: u32,
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
}

impl SectionHeader {
    fn read(elf: &[u8], at: usize) -> Result<Self, ModinfoError> {
        let field = |offset: usize| {
            at.checked_add(offset).ok_or(ModinfoError::OutOfBounds {
                what: "section header",
            })
        };
        Ok(SectionHeader {
            name: read_u32(elf, field(0)?)?,
            kind: read_u32(elf, field(4)?)?,
            offset: read_u64(elf, field(24)?)?,
            size: read_u64(elf, field(32)?)?,
            link: read_u32(elf, field(40)?)?,
        })
    }

    fn contents<'a>(&self, elf: &'a [u8]) -> Result<&'a [u8], ModinfoError> {
        if self.kind == SHT_NOBITS {
            return Ok(&[]);
        }
        let start = usize::try_from(self.offset).ok();
        let end = self
            .offset
            .checked_add(self.size)
            .and_then(|e| usize::try_from(e).ok());
        start
            .zip(end)
            .and_then(|(start, end)| elf.get(start..end))
            .ok_or(ModinfoError::OutOfBounds {
                what: "section contents",
            })
    }
}

fn read_bytes<const N: usize>(elf: &[u8], at: usize) -> Result<[u8; N], ModinfoError> {
    at.checked_add(N)
        .and_then(|end| elf.get(at..end))
        .and_then(|b| b.try_into().ok())
        .ok_or(ModinfoError::OutOfBounds {
            what: "header field",
        })
}

fn read_u16(elf: &[u8], at: usize) -> Result<u16, ModinfoError> {
    read_bytes(elf, at).map(u16::from_le_bytes)
}

fn read_u32(elf: &[u8], at: usize) -> Result<u32, ModinfoError> {
    read_bytes(elf, at).map(u32::from_le_bytes)
}

fn read_u64(elf: &[u8], at: usize) -> Result<u64, ModinfoError> {
    read_bytes(elf, at).map(u64::from_le_bytes)
}

/// Builds a minimal relocatable ELF64 with a `.modinfo` section holding
/// `name=` and `depends=`, like a real module as far as this parser cares.
#[cfg(test)]
pub(crate) fn synthetic_module(name: &str, depends: &[&str]) -> Vec<u8> {
    let modinfo = format!(
        "license=GPL\0depends={}\0name={name}\0vermagic=6.1.0-test SMP\0",
        depends.join(",")
    );
    let shstrtab = b"\0.modinfo\0.shstrtab\0";
    let modinfo_at = EHDR_SIZE;
    let shstrtab_at = modinfo_at + modinfo.len();
    let shoff = (shstrtab_at + shstrtab.len()).next_multiple_of(8);

    let mut elf = vec![0u8; shoff];
    elf[..4].copy_from_slice(ELF_MAGIC);
    elf[4] = ELFCLASS64;
    elf[5] = ELFDATA2LSB;
    elf[6] = 1; // EV_CURRENT
    elf[0x10..0x12].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
    elf[0x12..0x14].copy_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    elf[0x34..0x36].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    elf[0x3a..0x3c].copy_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
    elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
    elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
    elf[modinfo_at..shstrtab_at].copy_from_slice(modinfo.as_bytes());
    elf[shstrtab_at..shstrtab_at + shstrtab.len()].copy_from_slice(shstrtab);

    let mut section = |name: u32, kind: u32, offset: usize, size: usize| {
        let mut header = [0u8; SHDR_SIZE];
        header[0..4].copy_from_slice(&name.to_le_bytes());
        header[4..8].copy_from_slice(&kind.to_le_bytes());
        header[24..32].copy_from_slice(&(offset as u64).to_le_bytes());
        header[32..40].copy_from_slice(&(size as u64).to_le_bytes());
        elf.extend_from_slice(&header);
    };
    section(0, 0, 0, 0);
    section(1, 1, modinfo_at, modinfo.len()); // SHT_PROGBITS
    section(10, 3, shstrtab_at, shstrtab.len()); // SHT_STRTAB
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_name_and_depends() {
        let elf = synthetic_module("virtio_net", &["virtio_ring", "virtio", "net_failover"]);

        let info = parse(&elf).unwrap();

        assert_eq!(info.name.as_deref(), Some("virtio_net"));
        assert_eq!(info.depends, ["virtio_ring", "virtio", "net_failover"]);
    }

    #[test]
    fn empty_depends_means_no_dependencies() {
        let elf = synthetic_module("virtio", &[]);

        let info = parse(&elf).unwrap();

        assert!(info.depends.is_empty());
    }

    #[test]
    fn rejects_non_elf() {
        let err = parse(b"#!/bin/sh\necho not a module\n").unwrap_err();

        assert_eq!(err, ModinfoError::NotElf64);
    }

    #[test]
    fn rejects_32_bit_elf() {
        let mut elf = synthetic_module("x", &[]);
        elf[4] = 1; // ELFCLASS32

        assert_eq!(parse(&elf).unwrap_err(), ModinfoError::NotElf64);
    }

    #[test]
    fn truncated_file_is_out_of_bounds_not_a_panic() {
        let elf = synthetic_module("x", &["y"]);

        for len in [EHDR_SIZE, elf.len() - SHDR_SIZE, elf.len() - SHDR_SIZE + 20] {
            let err = parse(&elf[..len]).unwrap_err();
            assert!(
                matches!(err, ModinfoError::OutOfBounds { .. }),
                "len {len}: {err}"
            );
        }
    }

    #[test]
    fn section_offsets_past_the_end_are_rejected() {
        let mut elf = synthetic_module("x", &[]);
        let shoff = u64::from_le_bytes(elf[0x28..0x30].try_into().unwrap()) as usize;
        let modinfo_header = shoff + SHDR_SIZE;
        elf[modinfo_header + 24..modinfo_header + 32].copy_from_slice(&u64::MAX.to_le_bytes());

        let err = parse(&elf).unwrap_err();

        assert!(matches!(err, ModinfoError::OutOfBounds { .. }));
    }

    #[test]
    fn missing_modinfo_section_is_reported() {
        let mut elf = synthetic_module("x", &[]);
        // Rename ".modinfo" in the name table.
        let at = elf.windows(8).position(|w| w == b".modinfo").unwrap();
        elf[at + 1] = b'X';

        assert_eq!(parse(&elf).unwrap_err(), ModinfoError::NoModinfo);
    }
}
