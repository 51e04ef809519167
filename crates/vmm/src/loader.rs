//! Putting the guest's software in memory: the kernel (ELF vmlinux, ELF with a PVH note, or
//! bzImage), the initrd, and the command line. linux-loader parses the formats; this module
//! picks the format, the entry mode and the places, and turns failures into errors a user
//! can act on.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader, load_cmdline};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::arch::x86_64::boot::{InitrdRegion, initrd_addr_max, initrd_address};
use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use crate::arch::x86_64::regs::EntryMode;

/// The 64-bit entry of a bzImage is this far into its protected-mode part.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// xloadflags bit: the kernel has a 64-bit entry point.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of the "HdrS" magic in a bzImage.
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;

/// Why the kernel, initrd or command line could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The file cannot be opened or read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither ELF nor bzImage.
    #[error("{0} is not a kernel: expected an ELF vmlinux or a bzImage")]
    NotAKernel(PathBuf),
    /// A bzImage without the 64-bit entry point Vireo uses.
    #[error(
        "{0} is a bzImage without a 64-bit entry point (xloadflags bit 0); Vireo boots 64-bit kernels"
    )]
    No64BitEntry(PathBuf),
    /// linux-loader refused the image (bad headers, segments below 1 MiB, too big for RAM).
    #[error("cannot load kernel {path}: {source}")]
    Kernel {
        /// The file.
        path: PathBuf,
        /// linux-loader's reason.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initrd does not fit.
    #[error(transparent)]
    Initrd(#[from] crate::arch::x86_64::boot::BootError),
    /// The command line is longer than the kernel accepts.
    #[error("kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit (without the terminating NUL).
        max: usize,
    },
    /// The command line has characters a kernel command line may not have.
    #[error("invalid kernel command line: {0}")]
    CmdlineInvalid(String),
}

/// A kernel in guest memory and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Entry point (guest physical).
    pub entry: GuestAddress,
    /// CPU mode at entry.
    pub mode: EntryMode,
    /// The bzImage's setup header, for the zero page.
    pub setup_header: Option<setup_header>,
    /// First address past the kernel image.
    pub end: u64,
}

impl LoadedKernel {
    /// The longest command line this kernel takes, without the NUL.
    pub fn cmdline_limit(&self) -> usize {
        let from_header = self
            .setup_header
            .filter(|h| h.version >= 0x0206 && h.cmdline_size > 0)
            .map(|h| h.cmdline_size as usize);
        from_header
            .unwrap_or(CMDLINE_MAX_SIZE - 1)
            .min(CMDLINE_MAX_SIZE - 1)
    }
}

fn read_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LoaderError {
    let path = path.to_path_buf();
    move |source| LoaderError::Read { what, path, source }
}

/// Load the kernel at `path` into `mem`, whatever its format.
pub fn load_kernel<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
) -> Result<LoadedKernel, LoaderError> {
    let mut file = File::open(path).map_err(read_error("kernel", path))?;
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF";
    let is_bzimage = !is_elf
        && file.seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET)).is_ok()
        && file.read_exact(&mut magic).is_ok()
        && magic == *b"HdrS";
    file.rewind().map_err(read_error("kernel", path))?;
    let kernel_error = |source| LoaderError::Kernel {
        path: path.to_path_buf(),
        source,
    };

    if is_elf {
        let result = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(kernel_error)?;
        let (entry, mode) = match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => (addr, EntryMode::Pvh32),
            _ => (result.kernel_load, EntryMode::Long64),
        };
        Ok(LoadedKernel {
            entry,
            mode,
            setup_header: None,
            end: result.kernel_end,
        })
    } else if is_bzimage {
        let result = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(kernel_error)?;
        let header = result
            .setup_header
            .ok_or_else(|| LoaderError::NotAKernel(path.into()))?;
        if header.version < 0x020c || header.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LoaderError::No64BitEntry(path.into()));
        }
        Ok(LoadedKernel {
            entry: result.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
            mode: EntryMode::Long64,
            setup_header: Some(header),
            end: result.kernel_end,
        })
    } else {
        Err(LoaderError::NotAKernel(path.into()))
    }
}

/// Load the initrd at `path` as high as the kernel allows.
pub fn load_initrd<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<InitrdRegion, LoaderError> {
    let mut file = File::open(path).map_err(read_error("initrd", path))?;
    let size = file.metadata().map_err(read_error("initrd", path))?.len();
    let limit = initrd_addr_max(kernel.setup_header.as_ref());
    let addr = initrd_address(mem, size, limit)?;
    if addr.raw_value() < kernel.end {
        return Err(crate::arch::x86_64::boot::BootError::InitrdTooLarge { size, limit }.into());
    }
    mem.read_exact_volatile_from(addr, &mut file, size as usize)
        .map_err(|e| LoaderError::Read {
            what: "initrd",
            path: path.into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(InitrdRegion { addr, size })
}

/// Check `cmdline` against the kernel's limit and write it at [`CMDLINE_START`]; returns
/// its length.
pub fn load_cmdline_for<M: GuestMemoryBackend>(
    mem: &M,
    cmdline: &str,
    kernel: &LoadedKernel,
) -> Result<usize, LoaderError> {
    let max = kernel.cmdline_limit();
    if cmdline.len() > max {
        return Err(LoaderError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut line =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| LoaderError::CmdlineInvalid(e.to_string()))?;
    line.insert_str(cmdline)
        .map_err(|e| LoaderError::CmdlineInvalid(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &line)
        .map_err(|e| LoaderError::CmdlineInvalid(e.to_string()))?;
    Ok(cmdline.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap()
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vireo-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        File::create(&path).unwrap().write_all(bytes).unwrap();
        path
    }

    /// A minimal bzImage: one setup sector after the boot sector, then `payload`.
    fn bzimage(version: u16, xloadflags: u16, payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 1024];
        image[0x1f1] = 1; // setup_sects
        image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        image[0x211] = 1; // LOADED_HIGH
        image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        image[0x218..0x21c].copy_from_slice(&0u32.to_le_bytes());
        image[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        image[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        image[0x238..0x23c].copy_from_slice(&255u32.to_le_bytes()); // cmdline_size
        image.extend_from_slice(payload);
        image
    }

    #[test]
    fn missing_kernel_names_the_path() {
        let err = load_kernel(&mem(), Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(matches!(err, LoaderError::Read { what: "kernel", .. }));
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
    }

    #[test]
    fn unreadable_kernel_is_an_error() {
        // A directory opens but cannot be read as a kernel.
        let err = load_kernel(&mem(), &std::env::temp_dir()).unwrap_err();
        assert!(
            matches!(err, LoaderError::Read { .. } | LoaderError::NotAKernel(_)),
            "{err}"
        );
    }

    #[test]
    fn random_bytes_are_not_a_kernel() {
        let path = temp_file("junk", &[0x42; 4096]);
        let err = load_kernel(&mem(), &path).unwrap_err();
        assert!(matches!(err, LoaderError::NotAKernel(_)));
        assert!(err.to_string().contains("is not a kernel"));
        let empty = temp_file("empty", &[]);
        assert!(matches!(
            load_kernel(&mem(), &empty),
            Err(LoaderError::NotAKernel(_))
        ));
    }

    #[test]
    fn broken_elf_is_refused_by_the_parser() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        let path = temp_file("broken.elf", &elf);
        assert!(matches!(
            load_kernel(&mem(), &path),
            Err(LoaderError::Kernel { .. })
        ));
    }

    #[test]
    fn bzimage_enters_at_the_64bit_entry() {
        let payload = vec![0x90u8; 0x1000];
        let path = temp_file("bz", &bzimage(0x020f, XLF_KERNEL_64, &payload));
        let mem = mem();
        let kernel = load_kernel(&mem, &path).unwrap();
        assert_eq!(kernel.entry, GuestAddress(0x10_0200));
        assert_eq!(kernel.mode, EntryMode::Long64);
        assert_eq!(kernel.end, 0x10_1000);
        assert_eq!(kernel.cmdline_limit(), 255);
        let byte: u8 = mem.read_obj(GuestAddress(0x10_0fff)).unwrap();
        assert_eq!(byte, 0x90);
    }

    #[test]
    fn old_or_32bit_bzimage_is_refused() {
        let path = temp_file("bz32", &bzimage(0x020f, 0, &[0; 512]));
        assert!(matches!(
            load_kernel(&mem(), &path),
            Err(LoaderError::No64BitEntry(_))
        ));
        let path = temp_file("bzold", &bzimage(0x0206, XLF_KERNEL_64, &[0; 512]));
        assert!(matches!(
            load_kernel(&mem(), &path),
            Err(LoaderError::No64BitEntry(_))
        ));
    }

    #[test]
    fn cmdline_limits() {
        let mem = mem();
        let elf_kernel = LoadedKernel {
            entry: GuestAddress(0x100_0000),
            mode: EntryMode::Long64,
            setup_header: None,
            end: 0x200_0000,
        };
        assert_eq!(
            load_cmdline_for(&mem, "console=ttyS0", &elf_kernel).unwrap(),
            13
        );
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");

        let long = "x".repeat(CMDLINE_MAX_SIZE);
        let err = load_cmdline_for(&mem, &long, &elf_kernel).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel command line is 2048 bytes; the limit is 2047"
        );
        assert!(load_cmdline_for(&mem, &"x".repeat(2047), &elf_kernel).is_ok());

        let bz_kernel = LoadedKernel {
            setup_header: Some(setup_header {
                version: 0x020f,
                cmdline_size: 255,
                ..Default::default()
            }),
            ..elf_kernel
        };
        assert!(matches!(
            load_cmdline_for(&mem, &"y".repeat(256), &bz_kernel),
            Err(LoaderError::CmdlineTooLong { len: 256, max: 255 })
        ));
    }

    #[test]
    fn initrd_is_loaded_high_and_missing_one_is_named() {
        let mem = mem();
        let kernel = LoadedKernel {
            entry: GuestAddress(0x100_0000),
            mode: EntryMode::Long64,
            setup_header: None,
            end: 0x110_0000,
        };
        let path = temp_file("initrd", &[7u8; 5000]);
        let region = load_initrd(&mem, &path, &kernel).unwrap();
        assert_eq!(region.size, 5000);
        assert_eq!(region.addr.raw_value(), ((32 << 20) - 5000) & !0xfff);
        let byte: u8 = mem.read_obj(region.addr.unchecked_add(4999)).unwrap();
        assert_eq!(byte, 7);

        let err = load_initrd(&mem, Path::new("/nonexistent/initrd"), &kernel).unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot read initrd /nonexistent/initrd"),
            "{err}"
        );
    }

    #[test]
    fn initrd_that_would_overlap_the_kernel_is_refused() {
        let mem = mem();
        let kernel = LoadedKernel {
            entry: GuestAddress(0x100_0000),
            mode: EntryMode::Long64,
            setup_header: None,
            end: 0x1f0_0000,
        };
        let path = temp_file("big-initrd", &vec![0u8; 2 << 20]);
        assert!(matches!(
            load_initrd(&mem, &path, &kernel),
            Err(LoaderError::Initrd(_))
        ));
    }
}
