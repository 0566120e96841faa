//! Loading the object: with maps adopted from (and pinned to) a pin directory, with the
//! pinned tries and private counters (`classify`), or with private maps (tests).

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData},
    programs::{SchedClassifier, Xdp},
};
use classifier_common::names;

use super::{
    DatapathError, IndexMaps, Maps,
    pins::{MapSizes, SIZED_MAPS, check_pin_dir, check_pins, pinned_size, prepare_pin_dir},
};

/// The loaded object: programs loaded into the kernel, maps created or adopted.
pub struct Datapath {
    pub(super) ebpf: Ebpf,
    pub(super) pin_dir: Option<PathBuf>,
}

impl Datapath {
    /// Loads the programs, adopting maps already pinned in `pin_dir` (so that a restart or an
    /// upgrade keeps every entry and counter) and pinning the ones it creates. The maps sized
    /// at load take `sizes` (`None`: the pinned map's size, else the default): a pinned one of
    /// another size is replaced by an empty one. A new flow table classifies its flows
    /// afresh by their next packet; a new index is off (the tries decide) until the next
    /// apply builds it.
    pub fn load_pinned(
        object: &[u8],
        pin_dir: &Path,
        sizes: &MapSizes,
    ) -> Result<Self, DatapathError> {
        prepare_pin_dir(pin_dir)?;
        let mut resolved = MapSizes::default();
        let mut stale = Vec::new();
        for (name, default) in SIZED_MAPS {
            let pinned = pinned_size(pin_dir, name);
            let size = sizes.get(name).or(pinned).unwrap_or(default);
            if let Some(pinned) = pinned
                && pinned != size
            {
                tracing::warn!(
                    "map {name} changes from {pinned} to {size} entries: a new, empty one \
                     replaces it"
                );
                stale.push(name);
            }
            if name == names::FLOWS {
                resolved.flows = Some(size);
            } else {
                resolved.index_slots = Some(size);
            }
        }
        // The index maps go together: a control word must never name a half of another map.
        if stale.contains(&names::INDEX_SLOTS) {
            stale.push(names::INDEX_CTL);
        }
        for name in stale {
            let path = pin_dir.join(name);
            match std::fs::remove_file(&path) {
                Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                    return Err(DatapathError::PinDir { path, source });
                }
                _ => {}
            }
        }
        check_pins(pin_dir, &resolved)?;
        let mut loader = EbpfLoader::new();
        size_maps(&mut loader, &resolved);
        let paths: Vec<(&str, PathBuf)> = names::PINNED_MAPS
            .iter()
            .map(|name| (*name, pin_dir.join(name)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(object).map_err(DatapathError::Load)?;
        Self::finish_load(ebpf, Some(pin_dir.to_owned()))
    }

    /// Loads a second copy of the programs that reads the pinned tries, policy and config but
    /// counts into private maps: `classify` asks what the data plane would decide without
    /// adding test packets to its counters.
    pub fn load_shadow(object: &[u8], pin_dir: &Path) -> Result<Self, DatapathError> {
        check_pin_dir(pin_dir)?;
        check_pins(pin_dir, &MapSizes::default())?;
        let shared = [
            names::PREFIX_V4,
            names::PREFIX_V6,
            names::POLICY,
            names::CONFIG,
        ];
        let mut paths: Vec<(&str, PathBuf)> = shared
            .iter()
            .map(|name| (*name, pin_dir.join(name)))
            .collect();
        if let Some((_, path)) = paths.iter().find(|(_, path)| !path.exists()) {
            return Err(DatapathError::NoPins { path: path.clone() });
        }
        let mut loader = EbpfLoader::new();
        // The live index too, when the pins have one, sized as pinned.
        let index = [names::INDEX_SLOTS, names::INDEX_CTL];
        if index.iter().all(|name| pin_dir.join(name).exists()) {
            for name in index {
                if let Some(size) = pinned_size(pin_dir, name) {
                    loader.map_max_entries(name, size);
                }
                paths.push((name, pin_dir.join(name)));
            }
        }
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(object).map_err(DatapathError::Load)?;
        Self::finish_load(ebpf, None)
    }

    /// Loads the programs with private maps that nothing else sees (tests, `classify`).
    pub fn load_private(object: &[u8]) -> Result<Self, DatapathError> {
        Self::load_private_sized(object, &MapSizes::default())
    }

    /// [`Datapath::load_private`] with the maps sized at load sized (benchmarks, tests).
    pub fn load_private_sized(object: &[u8], sizes: &MapSizes) -> Result<Self, DatapathError> {
        let mut loader = EbpfLoader::new();
        size_maps(&mut loader, sizes);
        let ebpf = loader.load(object).map_err(DatapathError::Load)?;
        Self::finish_load(ebpf, None)
    }

    fn finish_load(mut ebpf: Ebpf, pin_dir: Option<PathBuf>) -> Result<Self, DatapathError> {
        let program_error = |name| move |source| DatapathError::Program { name, source };
        xdp_program(&mut ebpf)?
            .load()
            .map_err(program_error(names::XDP_PROGRAM))?;
        tc_program(&mut ebpf, names::TC_PROGRAM)?
            .load()
            .map_err(program_error(names::TC_PROGRAM))?;
        tc_program(&mut ebpf, names::TC_ONLY_PROGRAM)?
            .load()
            .map_err(program_error(names::TC_ONLY_PROGRAM))?;
        tc_program(&mut ebpf, names::DNS_PROGRAM)?
            .load()
            .map_err(program_error(names::DNS_PROGRAM))?;
        // The query recorder, in the program array the tc ingress programs tail-call.
        let name = names::QUERY_PROGRAM;
        let recorder = tc_program(&mut ebpf, name)?;
        recorder.load().map_err(program_error(name))?;
        let fd = recorder
            .fd()
            .map_err(program_error(name))?
            .try_clone()
            .map_err(|source| DatapathError::Program {
                name,
                source: source.into(),
            })?;
        let jump = names::QUERY_JUMP;
        let map = ebpf
            .map_mut(jump)
            .ok_or(DatapathError::MissingMap { name: jump })?;
        aya::maps::ProgramArray::try_from(map)
            .and_then(|mut array| array.set(0, &fd, 0))
            .map_err(|source| DatapathError::Map { name: jump, source })?;
        Ok(Self { ebpf, pin_dir })
    }

    pub fn ebpf(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp, DatapathError> {
        xdp_program(&mut self.ebpf)
    }

    /// The tc program beside XDP (`breakout_mark`), or the one alone (`breakout_tc`).
    pub fn tc(&mut self, alone: bool) -> Result<&mut SchedClassifier, DatapathError> {
        tc_program(
            &mut self.ebpf,
            if alone {
                names::TC_ONLY_PROGRAM
            } else {
                names::TC_PROGRAM
            },
        )
    }

    /// The DNS capture program (tc egress).
    pub fn dns(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        tc_program(&mut self.ebpf, names::DNS_PROGRAM)
    }

    /// The DNS ring buffer of this loaded object, taken out of it (once).
    pub fn take_dns_ring(&mut self) -> Result<aya::maps::RingBuf<MapData>, DatapathError> {
        let name = names::DNS_RING;
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(DatapathError::MissingMap { name })?;
        aya::maps::RingBuf::try_from(map).map_err(|source| DatapathError::Map { name, source })
    }

    /// The maps of the loaded object.
    pub fn maps(&mut self) -> Result<Maps, DatapathError> {
        let mut take = |name: &'static str| {
            let map = self
                .ebpf
                .map_mut(name)
                .ok_or(DatapathError::MissingMap { name })?;
            // The object keeps its own handle; ours is a second fd on the same map.
            let (Map::LpmTrie(data)
            | Map::Array(data)
            | Map::PerCpuArray(data)
            | Map::LruHashMap(data)) = map
            else {
                return Err(DatapathError::MissingMap { name });
            };
            let info = data
                .info()
                .map_err(|source| DatapathError::Map { name, source })?;
            MapData::from_id(info.id()).map_err(|source| DatapathError::Map { name, source })
        };
        let index = IndexMaps::new(&take(names::INDEX_SLOTS)?, &take(names::INDEX_CTL)?)?;
        Maps::from_data(
            [
                take(names::PREFIX_V4)?,
                take(names::PREFIX_V6)?,
                take(names::POLICY)?,
                take(names::CONFIG)?,
                take(names::STATS)?,
                take(names::SET_STATS)?,
            ],
            Some(take(names::FLOWS)?),
            Some(index),
        )?
        .with_uplinks(Some([take(names::UPLINKS)?, take(names::UPLINK_STATS)?]))
    }
}

fn size_maps(loader: &mut EbpfLoader, sizes: &MapSizes) {
    for (name, _) in SIZED_MAPS {
        if let Some(size) = sizes.get(name) {
            loader.map_max_entries(name, size);
        }
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    let name = names::XDP_PROGRAM;
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram { name })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

fn tc_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram { name })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}
