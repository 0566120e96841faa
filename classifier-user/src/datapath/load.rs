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
    DatapathError, Maps,
    pins::{check_pin_dir, check_pins, pinned_flow_table_size, prepare_pin_dir},
};

/// The loaded object: programs loaded into the kernel, maps created or adopted.
pub struct Datapath {
    pub(super) ebpf: Ebpf,
    pub(super) pin_dir: Option<PathBuf>,
}

impl Datapath {
    /// Loads the programs, adopting maps already pinned in `pin_dir` (so that a restart or an
    /// upgrade keeps every entry and counter) and pinning the ones it creates. The flow table
    /// has `flow_table_size` entries (`None`: the pinned table's size, else the default): a
    /// pinned one of another size is replaced by an empty one (its flows are classified
    /// afresh by their next packet).
    pub fn load_pinned(
        object: &[u8],
        pin_dir: &Path,
        flow_table_size: Option<u32>,
    ) -> Result<Self, DatapathError> {
        prepare_pin_dir(pin_dir)?;
        let flow_table_size = flow_table_size
            .or_else(|| pinned_flow_table_size(pin_dir))
            .unwrap_or(classifier_common::DEFAULT_FLOWS);
        if let Some(pinned) = pinned_flow_table_size(pin_dir)
            && pinned != flow_table_size
        {
            tracing::warn!(
                "the flow table changes from {pinned} to {flow_table_size} entries: a new, empty \
                 one replaces it, and its flows are classified afresh"
            );
            let path = pin_dir.join(names::FLOWS);
            std::fs::remove_file(&path).map_err(|source| DatapathError::PinDir { path, source })?;
        }
        check_pins(pin_dir, Some(flow_table_size))?;
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(names::FLOWS, flow_table_size);
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
        check_pins(pin_dir, None)?;
        let shared = [
            names::PREFIX_V4,
            names::PREFIX_V6,
            names::POLICY,
            names::CONFIG,
        ];
        let paths: Vec<(&str, PathBuf)> = shared
            .iter()
            .map(|name| (*name, pin_dir.join(name)))
            .collect();
        if let Some((_, path)) = paths.iter().find(|(_, path)| !path.exists()) {
            return Err(DatapathError::NoPins { path: path.clone() });
        }
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(object).map_err(DatapathError::Load)?;
        Self::finish_load(ebpf, None)
    }

    /// Loads the programs with private maps that nothing else sees (tests, `classify`).
    pub fn load_private(object: &[u8]) -> Result<Self, DatapathError> {
        let ebpf = EbpfLoader::new()
            .load(object)
            .map_err(DatapathError::Load)?;
        Self::finish_load(ebpf, None)
    }

    fn finish_load(mut ebpf: Ebpf, pin_dir: Option<PathBuf>) -> Result<Self, DatapathError> {
        let program_error = |name| move |source| DatapathError::Program { name, source };
        xdp_program(&mut ebpf)?
            .load()
            .map_err(program_error(names::XDP_PROGRAM))?;
        tc_program(&mut ebpf)?
            .load()
            .map_err(program_error(names::TC_PROGRAM))?;
        Ok(Self { ebpf, pin_dir })
    }

    pub fn ebpf(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn xdp(&mut self) -> Result<&mut Xdp, DatapathError> {
        xdp_program(&mut self.ebpf)
    }

    pub fn tc(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        tc_program(&mut self.ebpf)
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
        )
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    let name = names::XDP_PROGRAM;
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram { name })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DatapathError> {
    let name = names::TC_PROGRAM;
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram { name })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}
