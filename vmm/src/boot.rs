//! Loading what the guest boots and writing everything its entry point
//! expects: the kernel (bzImage or ELF vmlinux) or firmware, command line,
//! initramfs, zero page or PVH start info, GDT and identity page tables.
//!
//! Entry is chosen by what the image offers:
//! - bzImage: the 64-bit Linux boot protocol at load address + 0x200.
//! - ELF with a PVH note (Xen `XEN_ELFNOTE_PHYS32_ENTRY`): PVH.
//! - ELF without one: the 64-bit Linux boot protocol at the ELF entry.
//! - Firmware (rust-hypervisor-firmware): always its PVH entry; the firmware
//!   then finds a bootloader or kernel on the disk itself.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, BzImage, KernelLoader, KernelLoaderResult};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::arch::boot_params::{
    build_zero_page, initramfs_address, initrd_addr_max, BootParamsError, ZeroPageSpec,
    XLF_KERNEL_64,
};
use crate::arch::layout::{
    low_ram_end, memory_map, LayoutError, MemoryMapEntry, CMDLINE_MAX_SIZE, CMDLINE_START,
    HIMEM_START, PVH_INFO_START, RSDP_START, ZERO_PAGE_START,
};
use crate::arch::paging::write_identity_map;
use crate::arch::pvh::{build_start_info, write_start_info};
use crate::arch::regs::{write_descriptor_tables, BootEntry, BootProtocol, RegsError};

/// Offset of the 64-bit entry point from a bzImage's load address.
const BZIMAGE_ENTRY_64_OFFSET: u64 = 0x200;
/// Lowest boot protocol version with a 64-bit entry point (2.12 adds the
/// `XLF_KERNEL_64` flag that announces it).
const MIN_64BIT_PROTOCOL: u16 = 0x20c;

/// What the guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSource {
    /// A Linux kernel entered directly.
    Kernel {
        /// bzImage or ELF vmlinux.
        kernel: PathBuf,
        /// cpio initramfs.
        initramfs: Option<PathBuf>,
        /// Kernel command line.
        cmdline: String,
    },
    /// Firmware with a PVH entry (rust-hypervisor-firmware).
    Firmware {
        /// The firmware ELF.
        firmware: PathBuf,
        /// Command line handed over in the start info.
        cmdline: String,
    },
}

/// What failed while preparing the guest for boot.
#[derive(Debug, Error)]
pub enum BootError {
    /// Opening or reading an image file.
    #[error("cannot read {}", path.display())]
    ReadImage {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Neither an ELF file nor a bzImage.
    #[error("{} is neither an ELF kernel nor a bzImage", .0.display())]
    UnknownKernelFormat(PathBuf),
    /// linux-loader refused the image.
    #[error("cannot load {} into guest memory", path.display())]
    LoadKernel {
        /// The file.
        path: PathBuf,
        /// The loader's error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// A bzImage from before the 64-bit boot protocol.
    #[error("{} has no 64-bit entry point (boot protocol {version:#x}, xloadflags {xloadflags:#x})", path.display())]
    No64BitEntry {
        /// The file.
        path: PathBuf,
        /// Its boot protocol version.
        version: u16,
        /// Its `xloadflags`.
        xloadflags: u16,
    },
    /// Firmware must be entered through PVH.
    #[error("firmware {} has no PVH entry note", .0.display())]
    FirmwareWithoutPvh(PathBuf),
    /// The command line is malformed or too long.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing the command line.
    #[error("cannot write the command line into guest memory")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// The memory size has no valid layout.
    #[error("invalid guest memory size")]
    Layout(#[source] LayoutError),
    /// Placing the initramfs or building the zero page.
    #[error("cannot build the boot parameters")]
    BootParams(#[source] BootParamsError),
    /// Copying the initramfs into guest memory.
    #[error("cannot copy the initramfs into guest memory")]
    LoadInitramfs(#[source] GuestMemoryError),
    /// Writing the zero page or PVH start info.
    #[error("cannot write the boot parameters into guest memory")]
    WriteBootParams(#[source] linux_loader::configurator::Error),
    /// Writing the identity page tables.
    #[error("cannot write the boot page tables into guest memory")]
    PageTables(#[source] GuestMemoryError),
    /// Writing the GDT/IDT.
    #[error("cannot write the boot descriptor tables")]
    DescriptorTables(#[source] RegsError),
}

/// Everything the VMM put in guest memory for the boot vCPU, so that callers
/// (and tests) can see what the guest was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    /// Where and how the boot vCPU starts.
    pub entry: BootEntry,
    /// The e820 map handed to the guest.
    pub memory_map: Vec<MemoryMapEntry>,
    /// Guest address of the command line.
    pub cmdline_addr: u64,
    /// The command line bytes, without the terminating NUL.
    pub cmdline: Vec<u8>,
    /// Initramfs address and size.
    pub initramfs: Option<(u64, u64)>,
    /// First byte of the loaded kernel or firmware.
    pub kernel_load: u64,
    /// First byte after it.
    pub kernel_end: u64,
    /// Guest address of the ACPI RSDP.
    pub rsdp_addr: u64,
}

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> BootError + '_ {
    move |source| BootError::ReadImage {
        path: path.to_owned(),
        source,
    }
}

fn load_error(path: &Path) -> impl FnOnce(linux_loader::loader::Error) -> BootError + '_ {
    move |source| BootError::LoadKernel {
        path: path.to_owned(),
        source,
    }
}

/// The image formats we can enter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageFormat {
    Elf,
    BzImage,
}

fn image_format(file: &mut File, path: &Path) -> Result<ImageFormat, BootError> {
    let mut head = [0u8; 0x206];
    let mut filled = 0;
    file.seek(SeekFrom::Start(0)).map_err(read_error(path))?;
    while filled < head.len() {
        match file.read(&mut head[filled..]).map_err(read_error(path))? {
            0 => break,
            n => filled += n,
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(read_error(path))?;
    if filled >= 4 && head[..4] == *b"\x7fELF" {
        Ok(ImageFormat::Elf)
    } else if filled == head.len() && head[0x202..0x206] == *b"HdrS" {
        Ok(ImageFormat::BzImage)
    } else {
        Err(BootError::UnknownKernelFormat(path.to_owned()))
    }
}

/// A loaded kernel or firmware: where it is and how to enter it.
struct LoadedImage {
    result: KernelLoaderResult,
    entry: u64,
    pvh: bool,
    setup_header: Option<setup_header>,
}

fn load_image(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedImage, BootError> {
    let mut file = File::open(path).map_err(read_error(path))?;
    match image_format(&mut file, path)? {
        ImageFormat::Elf => {
            let result = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(load_error(path))?;
            let (entry, pvh) = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (addr.0, true),
                _ => (result.kernel_load.0, false),
            };
            Ok(LoadedImage {
                result,
                entry,
                pvh,
                setup_header: None,
            })
        }
        ImageFormat::BzImage => {
            let result = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(load_error(path))?;
            let hdr = result.setup_header.unwrap_or_default();
            let (version, xloadflags) = (hdr.version, hdr.xloadflags);
            if version < MIN_64BIT_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::No64BitEntry {
                    path: path.to_owned(),
                    version,
                    xloadflags,
                });
            }
            Ok(LoadedImage {
                entry: result.kernel_load.0 + BZIMAGE_ENTRY_64_OFFSET,
                result,
                pvh: false,
                setup_header: Some(hdr),
            })
        }
    }
}

fn load_initramfs(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
    image: &LoadedImage,
) -> Result<(u64, u64), BootError> {
    let mut file = File::open(path).map_err(read_error(path))?;
    let size = file.metadata().map_err(read_error(path))?.len();
    let addr = initramfs_address(
        size,
        initrd_addr_max(image.setup_header.as_ref()),
        low_ram_end(mem_size),
        image.result.kernel_end,
    )
    .map_err(BootError::BootParams)?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(BootError::LoadInitramfs)?;
    Ok((addr, size))
}

/// Loads `source` into `mem` (sized `mem_size` bytes) and writes every boot
/// structure the entry point reads.
pub fn prepare_boot(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    source: &BootSource,
) -> Result<BootPlan, BootError> {
    let (image_path, initramfs_path, cmdline_str) = match source {
        BootSource::Kernel {
            kernel,
            initramfs,
            cmdline,
        } => (kernel, initramfs.as_ref(), cmdline),
        BootSource::Firmware { firmware, cmdline } => (firmware, None, cmdline),
    };
    let image = load_image(mem, image_path)?;
    if matches!(source, BootSource::Firmware { .. }) && !image.pvh {
        return Err(BootError::FirmwareWithoutPvh(image_path.clone()));
    }

    let cmdline = Cmdline::try_from(cmdline_str, CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline).map_err(BootError::WriteCmdline)?;
    let initramfs = initramfs_path
        .map(|path| load_initramfs(mem, mem_size, path, &image))
        .transpose()?;
    let map = memory_map(mem_size).map_err(BootError::Layout)?;

    let protocol = if image.pvh {
        let (info, memmap, modules) = build_start_info(CMDLINE_START, RSDP_START, &map, initramfs);
        write_start_info(mem, &info, &memmap, &modules).map_err(BootError::WriteBootParams)?;
        BootProtocol::Pvh {
            start_info: PVH_INFO_START,
        }
    } else {
        let zero_page = build_zero_page(&ZeroPageSpec {
            setup_header: image.setup_header,
            cmdline_addr: CMDLINE_START,
            cmdline_len: cmdline_str.len() + 1,
            initramfs,
            memory_map: &map,
            rsdp_addr: RSDP_START,
        })
        .map_err(BootError::BootParams)?;
        LinuxBootConfigurator::write_bootparams(
            &BootParams::new(&zero_page, GuestAddress(ZERO_PAGE_START)),
            mem,
        )
        .map_err(BootError::WriteBootParams)?;
        BootProtocol::Linux64 {
            zero_page: ZERO_PAGE_START,
        }
    };
    write_identity_map(mem).map_err(BootError::PageTables)?;
    write_descriptor_tables(mem).map_err(BootError::DescriptorTables)?;
    tracing::info!(
        entry = format_args!("{:#x}", image.entry),
        ?protocol,
        ?initramfs,
        "guest image loaded"
    );
    Ok(BootPlan {
        entry: BootEntry {
            entry: image.entry,
            protocol,
        },
        memory_map: map,
        cmdline_addr: CMDLINE_START,
        cmdline: cmdline_str.as_bytes().to_vec(),
        initramfs,
        kernel_load: image.result.kernel_load.0,
        kernel_end: image.result.kernel_end,
        rsdp_addr: RSDP_START,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::boot_params::HDRS_MAGIC;
    use crate::arch::layout::ram_ranges;
    use linux_loader::loader::bootparam::boot_params;
    use std::io::Write;

    const MEM: u64 = 128 << 20;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&ram_ranges(MEM).unwrap()).unwrap()
    }

    /// A bzImage-shaped file: boot sector + `setup_sects` sectors of setup,
    /// then `payload` as the protected-mode kernel.
    fn bzimage(version: u16, xloadflags: u16, payload: &[u8]) -> tempfile::NamedTempFile {
        let setup_sects = 1u8;
        let mut image = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        image[0x1f1] = setup_sects;
        image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        image[0x202..0x206].copy_from_slice(&HDRS_MAGIC.to_le_bytes());
        image[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        image[0x211] = 0x1; // LOADED_HIGH
        image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        image[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        image[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        image[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        image.extend_from_slice(payload);
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&image).unwrap();
        file
    }

    fn kernel_source(kernel: &Path, initramfs: Option<&Path>) -> BootSource {
        BootSource::Kernel {
            kernel: kernel.to_owned(),
            initramfs: initramfs.map(Path::to_owned),
            cmdline: "console=ttyS0 panic=-1".into(),
        }
    }

    #[test]
    fn bzimage_is_entered_at_its_64_bit_entry_with_the_zero_page() {
        let mem = memory();
        let kernel = bzimage(0x20f, XLF_KERNEL_64, &[0xf4; 0x400]);
        let mut initramfs = tempfile::NamedTempFile::new().unwrap();
        initramfs.write_all(&[0x5a; 5000]).unwrap();

        let plan = prepare_boot(
            &mem,
            MEM,
            &kernel_source(kernel.path(), Some(initramfs.path())),
        )
        .unwrap();

        assert_eq!(plan.entry.entry, HIMEM_START + 0x200);
        assert_eq!(
            plan.entry.protocol,
            BootProtocol::Linux64 {
                zero_page: ZERO_PAGE_START
            }
        );
        let (addr, size) = plan.initramfs.unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= MEM && addr >= plan.kernel_end);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(addr + 4999)).unwrap(), 0x5a);
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.ramdisk_image } as u64, addr);
        assert_eq!({ params.hdr.cmd_line_ptr } as u64, CMDLINE_START);
        assert_eq!(params.e820_entries as usize, plan.memory_map.len());
        let mut cmdline = vec![0u8; plan.cmdline.len() + 1];
        mem.read_slice(&mut cmdline, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&cmdline[..plan.cmdline.len()], b"console=ttyS0 panic=-1");
        assert_eq!(cmdline[plan.cmdline.len()], 0);
    }

    #[test]
    fn bzimage_without_64_bit_entry_is_refused() {
        let kernel = bzimage(0x20b, 0, &[0; 512]);

        let err = prepare_boot(&memory(), MEM, &kernel_source(kernel.path(), None)).unwrap_err();

        assert!(matches!(
            err,
            BootError::No64BitEntry { version: 0x20b, .. }
        ));
    }

    #[test]
    fn command_line_over_the_x86_limit_is_refused() {
        let kernel = bzimage(0x20f, XLF_KERNEL_64, &[0xf4; 512]);
        let source = BootSource::Kernel {
            kernel: kernel.path().to_owned(),
            initramfs: None,
            cmdline: "x".repeat(CMDLINE_MAX_SIZE),
        };

        let err = prepare_boot(&memory(), MEM, &source).unwrap_err();

        assert!(matches!(err, BootError::Cmdline(_)), "{err:?}");
    }

    #[test]
    fn random_bytes_are_not_a_kernel() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&[0x11; 4096]).unwrap();

        let err = prepare_boot(&memory(), MEM, &kernel_source(file.path(), None)).unwrap_err();

        assert!(matches!(err, BootError::UnknownKernelFormat(_)));
    }

    #[test]
    fn initramfs_larger_than_memory_is_refused_without_writing() {
        let kernel = bzimage(0x20f, XLF_KERNEL_64, &[0xf4; 512]);
        let initramfs = tempfile::NamedTempFile::new().unwrap();
        initramfs.as_file().set_len(MEM).unwrap();

        let err = prepare_boot(
            &memory(),
            MEM,
            &kernel_source(kernel.path(), Some(initramfs.path())),
        )
        .unwrap_err();

        assert!(matches!(
            err,
            BootError::BootParams(BootParamsError::NoRoomForInitramfs { .. })
        ));
    }

    #[test]
    fn firmware_must_be_an_elf_with_a_pvh_note() {
        let not_elf = bzimage(0x20f, XLF_KERNEL_64, &[0; 512]);
        let source = BootSource::Firmware {
            firmware: not_elf.path().to_owned(),
            cmdline: String::new(),
        };

        let err = prepare_boot(&memory(), MEM, &source).unwrap_err();

        assert!(matches!(err, BootError::FirmwareWithoutPvh(_)));
    }
}
