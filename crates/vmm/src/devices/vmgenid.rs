//! The VM generation ID (VMGenID, Microsoft's "Virtual Machine Generation ID"
//! specification, as Firecracker and QEMU offer it): 16 cryptographically random bytes in
//! guest memory that change whenever the VM starts again from a snapshot, so that every
//! restored copy of a guest, and every clone of one, learns that it is a new instance.
//! Linux's `vmgenid` driver (`drivers/virt/vmgenid.c`) mixes the ID into the kernel's
//! RNG when it binds, and when notified of a change it reads the ID again and, if it
//! differs, reseeds the RNG at once, so two clones do not produce the same "random"
//! numbers.
//!
//! - **Where**: [`VMGENID_START`], a page of guest memory in the legacy hole below 1 MiB
//!   (below the ACPI tables). The e820 map and the PVH memory map leave 0xa0000..1 MiB
//!   out of RAM, so the guest's page allocator never hands the page out; Linux maps it
//!   with `memremap` (write-back) and reads the ID from there. The ID is the page's first
//!   16 bytes; the rest stays zero.
//! - **How the guest finds it**: the DSDT's `VGEN` device, whose `ADDR` method returns
//!   that address ([`crate::arch::x86_64::acpi::VmGenIdAcpi`]).
//! - **How the guest learns of a change**: an edge on IOAPIC pin [`VMGENID_GSI`], raised
//!   through a KVM irqfd, which the DSDT's Generic Event Device (`GED_`) turns into
//!   `Notify (VGEN, 0x80)`.
//!
//! A new VM gets a fresh ID before its vCPUs first run, and no notification. A restored
//! VM ([`VmGenId::restore`]) gets a fresh ID written over the snapshot's before any vCPU
//! runs, and the notification once its vCPUs run ([`VmGenId::notify_if_pending`]):
//! right after the restore, or at the first resume of a VM restored paused.
//!
//! This module owns the ID and the interrupt's eventfd; the builder registers the
//! eventfd as an irqfd and describes the device in the DSDT. It touches nothing but
//! guest memory.

use std::io;

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::acpi::VmGenIdAcpi;
use crate::arch::x86_64::layout::{LOW_RAM_END, VMGENID_LEN, VMGENID_START};

/// Length of the generation ID in bytes.
pub const VMGENID_SIZE: usize = 16;
/// The IOAPIC pin of the change notification: the last pin, which neither the ISA
/// devices nor the virtio slots ([`crate::device_manager::VIRTIO_IRQS`]) use.
pub const VMGENID_GSI: u32 = 23;

/// A generation ID: 16 bytes, in the order the guest reads them from memory.
pub type GenerationId = [u8; VMGENID_SIZE];

/// Why the generation ID could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VmGenIdError {
    /// The host could not give random bytes.
    #[error("VMGenID: cannot read random bytes for a generation ID: {0}")]
    Random(#[source] io::Error),
    /// The interrupt's eventfd could not be made.
    #[error("VMGenID: cannot create the notification eventfd: {0}")]
    EventFd(#[source] io::Error),
    /// The ID's page is not guest memory (a guest too small to have the legacy hole).
    #[error("VMGenID: cannot write the generation ID at {addr:#x}: {source}")]
    Write {
        /// Where.
        addr: u64,
        /// Why.
        #[source]
        source: GuestMemoryError,
    },
    /// A snapshot placed the device where this build does not.
    #[error(
        "the snapshot's VMGenID is at {addr:#x} with GSI {gsi}; this vireo places it at \
         {VMGENID_START:#x} with GSI {VMGENID_GSI}"
    )]
    Placement {
        /// The snapshot's address.
        addr: u64,
        /// The snapshot's GSI.
        gsi: u32,
    },
}

/// What a snapshot keeps of the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmGenIdState {
    /// Guest physical address of the ID (the DSDT in the snapshot's memory names it).
    pub address: u64,
    /// The notification's GSI (the DSDT names it too).
    pub gsi: u32,
    /// The ID the guest held when the snapshot was taken, as 32 hex digits in memory
    /// order (what `xxd -p` of the 16 bytes prints).
    #[serde(with = "hex_id")]
    pub generation_id: GenerationId,
}

/// The generation ID device of one VM.
pub struct VmGenId {
    addr: GuestAddress,
    gsi: u32,
    id: GenerationId,
    interrupt: EventFd,
    /// A new ID was written that the guest has not been told of yet.
    notify_pending: bool,
}

impl std::fmt::Debug for VmGenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmGenId")
            .field("addr", &self.addr)
            .field("gsi", &self.gsi)
            .field("id", &hex_id::encode(&self.id))
            .field("notify_pending", &self.notify_pending)
            .finish()
    }
}

/// 16 bytes from the host kernel's random pool (`getrandom(2)`, the CSPRNG behind
/// /dev/urandom), as the specification asks: "a cryptographically random" 128-bit value.
pub fn new_generation_id() -> Result<GenerationId, VmGenIdError> {
    let mut id = [0u8; VMGENID_SIZE];
    virtio_devices::rng::getrandom(&mut id).map_err(VmGenIdError::Random)?;
    Ok(id)
}

impl VmGenId {
    /// The device of a new VM: a fresh ID written at [`VMGENID_START`] in `mem`.
    pub fn new<M: GuestMemoryBackend>(mem: &M) -> Result<Self, VmGenIdError> {
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmGenIdError::EventFd)?;
        let mut device = Self {
            addr: GuestAddress(VMGENID_START),
            gsi: VMGENID_GSI,
            id: [0; VMGENID_SIZE],
            interrupt,
            notify_pending: false,
        };
        device.write_new_id(mem)?;
        Ok(device)
    }

    /// The device of a VM restored from a snapshot that had `state`: a fresh ID, never
    /// the snapshot's, written over it in `mem`, and a notification pending for when the
    /// vCPUs run ([`VmGenId::notify_if_pending`]). The snapshot's guest was told the
    /// device's place by its DSDT, so a place this build would not use is refused.
    pub fn restore<M: GuestMemoryBackend>(
        mem: &M,
        state: &VmGenIdState,
    ) -> Result<Self, VmGenIdError> {
        if state.address != VMGENID_START || state.gsi != VMGENID_GSI {
            return Err(VmGenIdError::Placement {
                addr: state.address,
                gsi: state.gsi,
            });
        }
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmGenIdError::EventFd)?;
        let mut device = Self {
            addr: GuestAddress(state.address),
            gsi: state.gsi,
            id: state.generation_id,
            interrupt,
            notify_pending: false,
        };
        device.write_new_id(mem)?;
        device.notify_pending = true;
        Ok(device)
    }

    /// Draw an ID other than the current one and write it to guest memory.
    fn write_new_id<M: GuestMemoryBackend>(&mut self, mem: &M) -> Result<(), VmGenIdError> {
        let mut id = new_generation_id()?;
        // Equal 16 random bytes twice is a broken random source; draw once more rather
        // than tell the guest "changed" with the same ID.
        while id == self.id {
            id = new_generation_id()?;
        }
        mem.write_slice(&id, self.addr)
            .map_err(|source| VmGenIdError::Write {
                addr: self.addr.0,
                source,
            })?;
        log::debug!(
            "VMGenID: generation ID {} at {:#x}",
            hex_id::encode(&id),
            self.addr.0
        );
        self.id = id;
        Ok(())
    }

    /// Tell the guest the ID changed, if it did since it was last told: an edge on the
    /// notification GSI. Call once the vCPUs run. An eventfd write that fails (it cannot,
    /// short of a counter at its maximum) is logged; the guest then keeps the ID it read
    /// at boot until the next restore, which is what a guest without the driver sees.
    pub fn notify_if_pending(&mut self) {
        if !self.notify_pending {
            return;
        }
        self.notify_pending = false;
        match self.interrupt.write(1) {
            Ok(()) => log::debug!("VMGenID: guest notified on GSI {}", self.gsi),
            Err(e) => log::warn!("VMGenID: cannot notify the guest on GSI {}: {e}", self.gsi),
        }
    }

    /// The eventfd the builder registers as the irqfd of [`VmGenId::gsi`].
    pub fn interrupt_evt(&self) -> &EventFd {
        &self.interrupt
    }

    /// The notification's GSI.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// The ID in guest memory.
    pub fn generation_id(&self) -> GenerationId {
        self.id
    }

    /// Whether a notification waits for the vCPUs to run.
    pub fn notify_pending(&self) -> bool {
        self.notify_pending
    }

    /// What the DSDT says of the device.
    pub fn acpi(&self) -> VmGenIdAcpi {
        VmGenIdAcpi {
            addr: self.addr.0,
            gsi: self.gsi,
        }
    }

    /// What a snapshot keeps.
    pub fn state(&self) -> VmGenIdState {
        VmGenIdState {
            address: self.addr.0,
            gsi: self.gsi,
            generation_id: self.id,
        }
    }
}

// The ID's page lies in the hole the memory maps leave out of RAM, below the ACPI tables.
const _: () = assert!(VMGENID_START >= LOW_RAM_END);
const _: () = assert!(VMGENID_START.is_multiple_of(4096) && VMGENID_LEN == 4096);
const _: () = assert!(VMGENID_START + VMGENID_LEN <= crate::arch::x86_64::acpi::ACPI_START);
// The notification is a pin of KVM's IOAPIC (24 pins, GSIs 0-23).
const _: () = assert!(VMGENID_GSI < 24);

/// The ID as 32 lowercase hex digits, in memory order.
pub(crate) mod hex_id {
    use super::{GenerationId, VMGENID_SIZE};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// `id` as 32 hex digits.
    pub fn encode(id: &GenerationId) -> String {
        id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// 32 hex digits as an ID.
    pub fn decode(text: &str) -> Result<GenerationId, String> {
        let bytes = text.as_bytes();
        if bytes.len() != 2 * VMGENID_SIZE || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!(
                "a generation ID is {} hex digits, not {text:?}",
                2 * VMGENID_SIZE
            ));
        }
        let mut id = [0u8; VMGENID_SIZE];
        for (i, byte) in id.iter_mut().enumerate() {
            // Two ASCII hex digits, checked above.
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(id)
    }

    pub fn serialize<S: Serializer>(id: &GenerationId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(id))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<GenerationId, D::Error> {
        let text = String::deserialize(d)?;
        decode(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn id_in(mem: &GuestMemoryMmap<()>) -> GenerationId {
        let mut id = [0u8; VMGENID_SIZE];
        mem.read_slice(&mut id, GuestAddress(VMGENID_START))
            .unwrap();
        id
    }

    #[test]
    fn the_notification_line_is_free_and_an_ioapic_pin() {
        use crate::device_manager::VIRTIO_IRQS;
        assert!(!VIRTIO_IRQS.contains(&VMGENID_GSI));
        // PIT, keyboard, cascade, COM2, COM1, RTC, mouse, ATA: the ISA lines.
        assert!(![0, 1, 2, 3, 4, 8, 12, 13].contains(&VMGENID_GSI));
    }

    #[test]
    fn ids_are_random_and_distinct() {
        let ids: Vec<GenerationId> = (0..64).map(|_| new_generation_id().unwrap()).collect();
        for (i, id) in ids.iter().enumerate() {
            assert_ne!(*id, [0; VMGENID_SIZE]);
            assert!(!ids[..i].contains(id), "{} drawn twice", hex_id::encode(id));
        }
        // 64 IDs are 8192 bits: each bit position is set in some and clear in others
        // (a stuck bit would be a broken source; chance of a false alarm ~128 * 2^-63).
        for bit in 0..128 {
            let set = ids.iter().filter(|id| id[bit / 8] & (1 << (bit % 8)) != 0);
            let n = set.count();
            assert!(0 < n && n < ids.len(), "bit {bit} set in {n} of 64 IDs");
        }
    }

    #[test]
    fn a_new_vm_gets_an_id_in_its_page_and_no_notification() {
        let mem = memory();
        let mut device = VmGenId::new(&mem).unwrap();
        assert_eq!(id_in(&mem), device.generation_id());
        assert_ne!(device.generation_id(), [0; VMGENID_SIZE]);
        // Only the 16 bytes: the rest of the page, and the bytes around it, stay zero.
        let mut page = vec![0u8; 2 * VMGENID_LEN as usize];
        mem.read_slice(&mut page, GuestAddress(VMGENID_START - VMGENID_LEN))
            .unwrap();
        let start = VMGENID_LEN as usize;
        assert!(page[..start].iter().all(|b| *b == 0));
        assert!(page[start + VMGENID_SIZE..].iter().all(|b| *b == 0));
        assert_eq!(
            device.acpi(),
            VmGenIdAcpi {
                addr: VMGENID_START,
                gsi: VMGENID_GSI
            }
        );
        assert!(!device.notify_pending());
        device.notify_if_pending();
        assert!(device.interrupt_evt().read().is_err(), "no edge at boot");
    }

    #[test]
    fn a_restore_writes_a_new_id_and_notifies_once() {
        let mem = memory();
        let first = VmGenId::new(&mem).unwrap();
        let state = first.state();
        assert_eq!(state.generation_id, first.generation_id());

        let mut restored = VmGenId::restore(&mem, &state).unwrap();
        assert_ne!(restored.generation_id(), state.generation_id);
        assert_eq!(id_in(&mem), restored.generation_id());
        assert!(restored.notify_pending());
        assert!(
            restored.interrupt_evt().read().is_err(),
            "not before the vCPUs run"
        );
        restored.notify_if_pending();
        assert_eq!(restored.interrupt_evt().read().unwrap(), 1);
        restored.notify_if_pending();
        assert!(
            restored.interrupt_evt().read().is_err(),
            "one edge per restore"
        );

        // A second clone of the same snapshot: yet another ID.
        let again = VmGenId::restore(&mem, &state).unwrap();
        assert_ne!(again.generation_id(), state.generation_id);
        assert_ne!(again.generation_id(), restored.generation_id());
    }

    #[test]
    fn a_snapshot_placing_it_elsewhere_is_refused_and_memory_untouched() {
        let mem = memory();
        let state = VmGenIdState {
            address: 0x9_f000,
            gsi: VMGENID_GSI,
            generation_id: [7; VMGENID_SIZE],
        };
        let err = VmGenId::restore(&mem, &state).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the snapshot's VMGenID is at 0x9f000 with GSI 23; this vireo places it at \
             0xdf000 with GSI 23"
        );
        let state = VmGenIdState { gsi: 5, ..state };
        assert!(matches!(
            VmGenId::restore(
                &mem,
                &VmGenIdState {
                    address: VMGENID_START,
                    ..state
                }
            ),
            Err(VmGenIdError::Placement { gsi: 5, .. })
        ));
        assert_eq!(id_in(&mem), [0; VMGENID_SIZE]);
    }

    #[test]
    fn memory_without_the_page_is_an_error() {
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        let err = VmGenId::new(&small).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("VMGenID: cannot write the generation ID at 0xdf000"),
            "{err}"
        );
    }

    #[test]
    fn the_state_keeps_the_id_as_hex_and_refuses_bad_hex() {
        let state = VmGenIdState {
            address: VMGENID_START,
            gsi: VMGENID_GSI,
            generation_id: [
                0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff,
            ],
        };
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "address": 0xd_f000,
                "gsi": 23,
                "generation_id": "00112233445566778899aabbccddeeff",
            })
        );
        let back: VmGenIdState = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, state);
        for bad in [
            "",
            "0011",
            "00112233445566778899aabbccddeeffaa",
            "g0112233445566778899aabbccddeeff",
        ] {
            let mut json = json.clone();
            json["generation_id"] = bad.into();
            let err = serde_json::from_value::<VmGenIdState>(json).unwrap_err();
            assert!(err.to_string().contains("hex digits"), "{bad:?}: {err}");
        }
        assert_eq!(
            hex_id::decode("00112233445566778899AABBCCDDEEFF").unwrap(),
            state.generation_id
        );
    }
}
