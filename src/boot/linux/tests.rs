//! Linux boot without KVM: what the loader writes into guest memory for each
//! image kind and payload format, and the errors for what cannot boot.

use super::synthetic::{self, BzImageSpec};
use super::*;
use crate::boot::{load_boot, Module};

const MIB: u64 = 1 << 20;
/// Where the synthetic vmlinux loads, as Debian's does (LOAD_PHYSICAL_ADDR).
const LOAD: u64 = 0x100_0000;
const FORMATS: [Compression; 5] = [
    Compression::Xz,
    Compression::Gzip,
    Compression::Zstd,
    Compression::Lz4,
    Compression::None,
];

fn code() -> Vec<u8> {
    (0..300u32).map(|index| (index * 7) as u8).collect()
}

fn pvh_vmlinux() -> Vec<u8> {
    synthetic::vmlinux(&code(), LOAD, 0x4000, Some(LOAD + 0x10))
}

fn boot<'a>(kernel: &'a [u8], command_line: &'a str, modules: &'a [Module]) -> BootImage<'a> {
    BootImage {
        kernel,
        command_line,
        modules,
        protocol: Protocol::Auto,
    }
}

fn initrd(len: usize) -> Vec<Module> {
    vec![Module {
        data: (0..len).map(|index| (index % 253) as u8 + 1).collect(),
        command_line: "initrd.img".into(),
    }]
}

fn read(memory: &GuestMemory, address: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    memory.read(address, &mut bytes).unwrap();
    bytes
}

fn read_u32(memory: &GuestMemory, address: u64) -> u32 {
    u32::from_le_bytes(read(memory, address, 4).try_into().unwrap())
}

fn read_u64(memory: &GuestMemory, address: u64) -> u64 {
    u64::from_le_bytes(read(memory, address, 8).try_into().unwrap())
}

fn c_string(memory: &GuestMemory, address: u64) -> String {
    let bytes = read(memory, address, 256);
    let end = bytes.iter().position(|&byte| byte == 0).unwrap();
    String::from_utf8(bytes[..end].to_vec()).unwrap()
}

/// Checks everything a PVH boot of `pvh_vmlinux` with `initrd(5000)` and
/// command line "console=ttyS0" leaves.
fn check_pvh_boot(memory: &GuestMemory, state: &EntryState) {
    assert_eq!(state.protocol, Protocol::LinuxPvh);
    assert_eq!(u64::from(state.entry), LOAD + 0x10);
    assert_eq!(u64::from(state.info_address), START_INFO_ADDRESS);
    assert_eq!((state.segments.code, state.segments.data), (0x10, 0x18));
    assert_eq!(read(memory, LOAD, 300), code());
    assert_eq!(read(memory, LOAD + 300, 16), [0; 16], "bss");
    let info = START_INFO_ADDRESS;
    assert_eq!(read_u32(memory, info), HVM_START_MAGIC);
    assert_eq!(read_u32(memory, info + 4), 1, "version");
    assert_eq!(read_u32(memory, info + 12), 1, "nr_modules");
    assert_eq!(read_u64(memory, info + 32), 0, "rsdp_paddr");
    assert_eq!(
        c_string(memory, read_u64(memory, info + 24)),
        "console=ttyS0"
    );
    let module = read_u64(memory, info + 16);
    let (start, size) = (read_u64(memory, module), read_u64(memory, module + 8));
    assert_eq!(size, 5000);
    assert_eq!(start % 4096, 0, "page aligned");
    assert!(start >= LOAD + 300 + 0x4000, "above the kernel's bss");
    assert!(
        start + size <= 32 * MIB && start + size > 32 * MIB - 4096,
        "high"
    );
    assert_eq!(read(memory, start, 5000), initrd(5000)[0].data);
    assert_eq!(state.image_end, start + size);
    let map = read_u64(memory, info + 40);
    let entries = read_u32(memory, info + 48) as usize;
    let expected = pc::memory_regions(32 * MIB);
    assert_eq!(entries, expected.len());
    for (index, (base, length, kind)) in expected.into_iter().enumerate() {
        let entry = map + 24 * index as u64;
        assert_eq!(read_u64(memory, entry), base);
        assert_eq!(read_u64(memory, entry + 8), length);
        assert_eq!(read_u32(memory, entry + 16), kind);
        assert_eq!(read_u32(memory, entry + 20), 0);
    }
    // The first entry is RAM up to the EBDA, the last RAM from 1 MiB.
    assert_eq!(read_u64(memory, map + 8), 0x9fc00);
    // The BIOS data area is there for Linux to find the EBDA.
    assert_eq!(read(memory, 0x40e, 2), [0xc0, 0x9f]);
}

#[test]
fn a_pvh_vmlinux_boots_by_pvh() {
    let image = pvh_vmlinux();
    assert_eq!(
        identify(&image).unwrap(),
        Some(LinuxImage::PvhVmlinux((LOAD + 0x10) as u32))
    );
    let mut memory = GuestMemory::new(32 * MIB).unwrap();
    let modules = initrd(5000);
    let state = load_boot(&mut memory, &boot(&image, "console=ttyS0", &modules)).unwrap();
    check_pvh_boot(&memory, &state);
    assert!(crate::boot::is_linux(&image, Protocol::Auto).unwrap());
}

#[test]
fn a_bzimage_boots_its_payload_by_pvh_in_every_format() {
    for format in FORMATS {
        let image = synthetic::wrap_vmlinux(&pvh_vmlinux(), format).unwrap();
        let header = parse_setup_header(&image).unwrap();
        let payload = header.payload.clone().unwrap();
        assert_eq!(Compression::detect(&image[payload]), Some(format));
        let mut memory = GuestMemory::new(32 * MIB).unwrap();
        let modules = initrd(5000);
        let state = load_boot(&mut memory, &boot(&image, "console=ttyS0", &modules))
            .unwrap_or_else(|error| panic!("{format:?}: {error}"));
        check_pvh_boot(&memory, &state);
        let description = describe(&image).unwrap();
        assert_eq!(description.compression, Some(format));
        assert_eq!(description.format, "bzImage, boot protocol 2.15");
    }
}

#[test]
fn setup_header_fields() {
    let protected_mode = [0x90u8; 100];
    let mut spec = BzImageSpec::new(&protected_mode);
    spec.setup_sects = 0;
    spec.relocatable = true;
    spec.payload = Some(10..60);
    spec.pref_address = 0x100_0000;
    spec.init_size = 0x30_0000;
    let image = synthetic::bzimage(&spec);
    let header = parse_setup_header(&image).unwrap();
    assert_eq!(header.setup_sects, 4, "0 means 4");
    assert_eq!(header.protected_mode, 5 * 512..5 * 512 + 100);
    assert_eq!(header.payload, Some(5 * 512 + 10..5 * 512 + 60));
    assert_eq!(header.version, 0x020f);
    assert_eq!(header.code32_start, 0x10_0000);
    assert_eq!(header.cmdline_size, 2047);
    assert_eq!(
        (header.pref_address, header.init_size),
        (0x100_0000, 0x30_0000)
    );
    assert!(header.relocatable);
    assert_eq!(header.header, 0x1f1..0x26c);
    assert_eq!(
        header.kernel_version.as_deref(),
        Some("6.1.0-synthetic (lore-dbg tests) #1")
    );
    // Before 2.08 there are no payload fields, before 2.06 the command line is
    // limited to 255 bytes, before 2.10 there is no pref_address.
    spec.version = 0x0205;
    let header = parse_setup_header(&synthetic::bzimage(&spec)).unwrap();
    assert_eq!(header.payload, None);
    assert_eq!(header.cmdline_size, 255);
    assert_eq!(header.pref_address, 0x10_0000);
}

#[test]
fn old_protocols_zimages_and_cut_headers_are_refused() {
    let protected_mode = [0x90u8; 64];
    let mut spec = BzImageSpec::new(&protected_mode);
    spec.version = 0x0201;
    assert!(matches!(
        parse_setup_header(&synthetic::bzimage(&spec)),
        Err(LinuxError::ProtocolTooOld(0x0201))
    ));
    let mut image = synthetic::bzimage(&BzImageSpec::new(&protected_mode));
    image[0x211] = 0;
    assert!(matches!(
        parse_setup_header(&image),
        Err(LinuxError::NotBzImage)
    ));
    let image = synthetic::bzimage(&BzImageSpec::new(&protected_mode));
    assert!(matches!(
        parse_setup_header(&image[..0x300]),
        Err(LinuxError::Truncated(_))
    ));
}

/// A bzImage with no payload: boots by the 32-bit protocol.
fn boot32_image(protected_mode: &[u8]) -> Vec<u8> {
    synthetic::bzimage(&BzImageSpec::new(protected_mode))
}

#[test]
fn the_32bit_protocol_fills_the_zero_page() {
    let protected_mode: Vec<u8> = (0..700u32).map(|index| index as u8).collect();
    let image = boot32_image(&protected_mode);
    let mut memory = GuestMemory::new(64 * MIB).unwrap();
    let modules = initrd(10_000);
    let state = load_boot(&mut memory, &boot(&image, "root=/dev/ram0 quiet", &modules)).unwrap();
    assert_eq!(state.protocol, Protocol::Linux32);
    assert_eq!(state.entry, 0x10_0000);
    assert_eq!(u64::from(state.esi), BOOT_PARAMS_ADDRESS);
    assert_eq!(state.segments.code, 0x10);
    assert_eq!(state.segments.data, 0x18);
    let (gdt, limit) = state.segments.gdt.unwrap();
    assert_eq!(limit, 31);
    assert_eq!(read_u64(&memory, gdt + 0x10), 0x00cf_9b00_0000_ffff);
    assert_eq!(read_u64(&memory, gdt + 0x18), 0x00cf_9300_0000_ffff);
    assert_eq!(read(&memory, 0x10_0000, 700), protected_mode);
    let params = BOOT_PARAMS_ADDRESS;
    let z = |offset: usize| params + offset as u64;
    // The image's setup header, copied, but for the loader's fields.
    assert_eq!(read(&memory, z(0x1f1), 0x210 - 0x1f1), image[0x1f1..0x210]);
    assert_eq!(read(&memory, z(0x22c), 0x26c - 0x22c), image[0x22c..0x26c]);
    assert_eq!(read(&memory, z(0x202), 4), b"HdrS");
    assert_eq!(read(&memory, z(0x210), 1), [0xff], "type_of_loader");
    assert_eq!(read(&memory, z(0x211), 1), [LOADED_HIGH | CAN_USE_HEAP]);
    assert_eq!(read(&memory, z(0x224), 2), 0xfc00u16.to_le_bytes());
    assert_eq!(
        c_string(&memory, u64::from(read_u32(&memory, z(0x228)))),
        "root=/dev/ram0 quiet"
    );
    let (ramdisk, size) = (read_u32(&memory, z(0x218)), read_u32(&memory, z(0x21c)));
    assert_eq!(size, 10_000);
    assert_eq!(ramdisk % 4096, 0);
    assert!(u64::from(ramdisk + size) <= 64 * MIB);
    assert!(
        u64::from(ramdisk) >= 0x10_0000 + 2 * 700,
        "clear of init_size"
    );
    assert_eq!(read(&memory, u64::from(ramdisk), 10_000), modules[0].data);
    assert_eq!(
        read(&memory, z(0x2), 2),
        (63 * 1024u16).to_le_bytes(),
        "ext_mem_k"
    );
    assert_eq!(read_u32(&memory, z(0x1e0)), 63 * 1024, "alt_mem_k");
    let regions = pc::memory_regions(64 * MIB);
    assert_eq!(read(&memory, z(0x1e8), 1), [regions.len() as u8]);
    for (index, (base, length, kind)) in regions.into_iter().enumerate() {
        let entry = z(0x2d0 + 20 * index);
        assert_eq!(read_u64(&memory, entry), base);
        assert_eq!(read_u64(&memory, entry + 8), length);
        assert_eq!(read_u32(&memory, entry + 16), kind);
    }
    assert_eq!(read(&memory, z(0x1ef), 1), [0], "no sentinel");
    assert_eq!(read(&memory, z(0x6), 2), [3, 80], "mode 3, 80 columns");
}

#[test]
fn initrd_addr_max_caps_the_initrd() {
    let protected_mode = [0x90u8; 64];
    let mut spec = BzImageSpec::new(&protected_mode);
    spec.initrd_addr_max = 0x7f_ffff;
    let image = synthetic::bzimage(&spec);
    let mut memory = GuestMemory::new(64 * MIB).unwrap();
    let modules = initrd(4096);
    load_boot(&mut memory, &boot(&image, "", &modules)).unwrap();
    let ramdisk = read_u32(&memory, BOOT_PARAMS_ADDRESS + 0x218);
    assert_eq!(ramdisk, 0x80_0000 - 4096);
}

#[test]
fn a_relocatable_kernel_reserves_its_decompression_area() {
    let protected_mode = [0x90u8; 64];
    let mut spec = BzImageSpec::new(&protected_mode);
    spec.relocatable = true;
    spec.pref_address = 0x100_0000;
    spec.init_size = 0x200_0000;
    let image = synthetic::bzimage(&spec);
    // 16 MiB + 32 MiB of init_size: 48 MiB is needed before any initrd.
    let mut memory = GuestMemory::new(40 * MIB).unwrap();
    let error = load_boot(&mut memory, &boot(&image, "", &[])).unwrap_err();
    assert!(
        matches!(
            error,
            BootError::Linux(LinuxError::DecompressorDoesNotFit { needed_mib: 48, .. })
        ),
        "{error}"
    );
    assert!(error.to_string().contains("--mem 48M"), "{error}");
    let mut memory = GuestMemory::new(52 * MIB).unwrap();
    let modules = initrd(8 * MIB as usize);
    let error = load_boot(&mut memory, &boot(&image, "", &modules)).unwrap_err();
    assert!(error.to_string().contains("--mem 56M"), "{error}");
    let mut memory = GuestMemory::new(56 * MIB).unwrap();
    load_boot(&mut memory, &boot(&image, "", &modules)).unwrap();
}

#[test]
fn what_does_not_fit_says_mem() {
    // The kernel's bss runs past RAM.
    let image = synthetic::vmlinux(&code(), LOAD, 64 * MIB, Some(LOAD));
    let mut memory = GuestMemory::new(32 * MIB).unwrap();
    let error = load_boot(&mut memory, &boot(&image, "", &[])).unwrap_err();
    assert!(error.to_string().contains("--mem"), "{error}");
    // The initrd does not fit above the kernel.
    let image = pvh_vmlinux();
    let modules = initrd(20 * MIB as usize);
    let error = load_boot(&mut memory, &boot(&image, "", &modules)).unwrap_err();
    assert!(
        matches!(error, BootError::Linux(LinuxError::InitrdDoesNotFit { .. })),
        "{error}"
    );
    assert!(error.to_string().contains("--mem 37M"), "{error}");
}

#[test]
fn a_vmlinux_without_pvh_note_is_refused_with_advice() {
    let image = synthetic::vmlinux(&code(), LOAD, 0, None);
    let mut memory = GuestMemory::new(32 * MIB).unwrap();
    let error = load_boot(&mut memory, &boot(&image, "", &[])).unwrap_err();
    assert!(
        matches!(error, BootError::Linux(LinuxError::NoPvhNote)),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("bzImage") && text.contains("CONFIG_PVH"),
        "{text}"
    );
}

#[test]
fn payloads_lore_dbg_cannot_decompress_fall_back_to_the_32bit_protocol() {
    let mut protected_mode = vec![0x90u8; 16];
    protected_mode.extend_from_slice(b"BZh91AY&SY not really bzip2");
    let mut spec = BzImageSpec::new(&protected_mode);
    spec.payload = Some(16..protected_mode.len());
    let image = synthetic::bzimage(&spec);
    let mut memory = GuestMemory::new(32 * MIB).unwrap();
    let state = load_boot(&mut memory, &boot(&image, "", &[])).unwrap();
    assert_eq!(state.protocol, Protocol::Linux32);
    // A payload without the PVH note, too.
    let plain = synthetic::vmlinux(&code(), LOAD, 0, None);
    let image = synthetic::wrap_vmlinux(&plain, Compression::Gzip).unwrap();
    let state = load_boot(&mut memory, &boot(&image, "", &[])).unwrap();
    assert_eq!(state.protocol, Protocol::Linux32);
    // A corrupt payload of a format lore-dbg reads is an error.
    let mut image = synthetic::wrap_vmlinux(&pvh_vmlinux(), Compression::Xz).unwrap();
    let payload = parse_setup_header(&image).unwrap().payload.unwrap();
    image[payload.start + 40] ^= 0xff;
    let error = load_boot(&mut memory, &boot(&image, "", &[])).unwrap_err();
    let mut chain = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        chain += &format!(": {inner}");
        cause = inner.source();
    }
    assert!(chain.contains("xz-compressed kernel is corrupt"), "{chain}");
}

#[test]
fn a_recorded_protocol_is_followed() {
    let image = synthetic::wrap_vmlinux(&pvh_vmlinux(), Compression::Gzip).unwrap();
    let mut memory = GuestMemory::new(32 * MIB).unwrap();
    let mut forced = boot(&image, "", &[]);
    forced.protocol = Protocol::Linux32;
    assert_eq!(
        load_boot(&mut memory, &forced).unwrap().protocol,
        Protocol::Linux32
    );
    let plain = boot32_image(&[0x90; 64]);
    let mut forced = boot(&plain, "", &[]);
    forced.protocol = Protocol::LinuxPvh;
    assert!(matches!(
        load_boot(&mut memory, &forced),
        Err(BootError::Linux(LinuxError::PvhUnavailable(_)))
    ));
    let vmlinux = pvh_vmlinux();
    let mut forced = boot(&vmlinux, "", &[]);
    forced.protocol = Protocol::Linux32;
    assert!(load_boot(&mut memory, &forced).is_err());
    for code in [3, 4] {
        assert_eq!(Protocol::from_code(code).unwrap().code(), code);
    }
}

#[test]
fn one_initrd_and_bounded_command_lines() {
    let image = pvh_vmlinux();
    let mut memory = GuestMemory::new(32 * MIB).unwrap();
    let mut modules = initrd(10);
    modules.extend(initrd(10));
    assert!(matches!(
        load_boot(&mut memory, &boot(&image, "", &modules)),
        Err(BootError::Linux(LinuxError::TooManyInitrds(2)))
    ));
    let long = "x".repeat(1 << 20);
    assert!(matches!(
        load_boot(&mut memory, &boot(&image, &long, &[])),
        Err(BootError::Linux(LinuxError::CommandLineTooLong { .. }))
    ));
    let image = boot32_image(&[0x90; 64]);
    let line = "y".repeat(2048);
    assert!(matches!(
        load_boot(&mut memory, &boot(&image, &line, &[])),
        Err(BootError::Linux(LinuxError::CommandLineTooLong {
            len: 2048,
            max: 2047
        }))
    ));
}

#[test]
fn truncated_and_corrupt_images_never_panic() {
    let mut images = vec![pvh_vmlinux(), boot32_image(&[0x90; 600])];
    for format in FORMATS {
        images.push(synthetic::wrap_vmlinux(&pvh_vmlinux(), format).unwrap());
    }
    let modules = initrd(100);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for image in &images {
        let step = (image.len() / 200).max(1);
        for len in (0..image.len()).step_by(step) {
            let mut memory = GuestMemory::new(32 * MIB).unwrap();
            let _ = load_boot(&mut memory, &boot(&image[..len], "x", &modules));
            let _ = describe(&image[..len]);
        }
        for _ in 0..100 {
            let mut corrupt = image.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed % corrupt.len() as u64) as usize;
                corrupt[at] = (seed >> 32) as u8;
            }
            let mut memory = GuestMemory::new(32 * MIB).unwrap();
            let _ = load_boot(&mut memory, &boot(&corrupt, "x", &modules));
        }
    }
}
