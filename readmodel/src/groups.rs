//! Read models split by the value of a second field: one read model per group beside the total.
//!
//! A projection with `group_by` (say distinct users grouped by `properties.channel`) folds each
//! value into the total, as without grouping, and into the read model of its group. The number
//! of groups one read model may create is bounded by `max_groups`: a value whose group would be
//! one more is counted in the total and in `past_max_groups`, never silently dropped from the
//! total. A value whose record has no group is counted in `without_group`. So for every read
//! model, `events == sum(group events) + without_group + past_max_groups`.
//!
//! Merging two grouped read models merges the groups of the same name and keeps every group of
//! either side, even past `max_groups` (which bounds what one bucket of one partition creates,
//! not what a merged range may hold; the query API bounds what it returns).
//!
//! # Stored bytes
//!
//! The groups follow the kind's payloads of the total as one more payload (the envelope's kind
//! byte has its high bit set, see `read_model`), all integers little-endian:
//!
//! | size | content                                                          |
//! |------|------------------------------------------------------------------|
//! | 4    | `max_groups`, u32, in `1..=MAX_GROUPS`                           |
//! | 8    | `without_group`, u64                                             |
//! | 8    | `past_max_groups`, u64                                           |
//! | 4    | number of groups, u32                                            |
//! | ...  | per group, names in ascending byte order: u32 length and UTF-8  |
//! |      | name (not empty), then u32 length and the group's read model     |
//!
//! Each group's read model is an ungrouped read model of the total's kind and parameters.

use std::collections::BTreeMap;

use crate::projection::SketchParams;
use crate::read_model::{GROUPED, REBUILD_HINT, ReadModel, ReadModelError};

/// Most groups a projection may declare with `max_groups`.
pub const MAX_GROUPS: u32 = 100_000;

/// Default `max_groups` of a projection with `group_by`.
pub const DEFAULT_MAX_GROUPS: u32 = 1_000;

/// The groups of a grouped read model.
#[derive(Clone)]
pub(crate) struct Groups {
    pub(crate) max_groups: u32,
    pub(crate) models: BTreeMap<String, ReadModel>,
    pub(crate) without_group: u64,
    pub(crate) past_max_groups: u64,
}

/// Where one value of a grouped read model went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupUpdate {
    /// Into the read model of its group.
    Grouped,
    /// The record had no group value: counted in the total and in `without_group`.
    WithoutGroup,
    /// Its group would have been one more than `max_groups`: counted in the total and in
    /// `past_max_groups`.
    PastMaxGroups,
}

impl Groups {
    pub(crate) fn new(max_groups: u32) -> Groups {
        Groups {
            max_groups,
            models: BTreeMap::new(),
            without_group: 0,
            past_max_groups: 0,
        }
    }

    /// Events counted in the groups and beside them.
    pub(crate) fn events(&self) -> Option<u64> {
        self.models
            .values()
            .try_fold(0u64, |sum, model| sum.checked_add(model.events()))?
            .checked_add(self.without_group)?
            .checked_add(self.past_max_groups)
    }

    /// Folds `value` into the read model of `group`, creating it from `empty` when there is
    /// room. The caller has counted the value in the total.
    pub(crate) fn update(
        &mut self,
        value: &str,
        group: Option<&str>,
        empty: impl FnOnce() -> ReadModel,
    ) -> GroupUpdate {
        let Some(group) = group.filter(|group| !group.is_empty()) else {
            self.without_group += 1;
            return GroupUpdate::WithoutGroup;
        };
        if let Some(model) = self.models.get_mut(group) {
            model.update(value);
            return GroupUpdate::Grouped;
        }
        if self.models.len() >= self.max_groups as usize {
            self.past_max_groups += 1;
            return GroupUpdate::PastMaxGroups;
        }
        let mut model = empty();
        model.update(value);
        self.models.insert(group.to_owned(), model);
        GroupUpdate::Grouped
    }

    /// Merges `other` in. The caller merged the totals first, which implies that every pair of
    /// groups merges (groups have the totals' parameters, and no group counts more events than
    /// its total); `params` are those of the merged total. Distinct counts of different `lg_k`
    /// merge down, so every group is brought to the total's parameters.
    pub(crate) fn merge(&mut self, other: &Groups, params: &SketchParams) {
        let empty = || ReadModel::new(params).expect("the parameters of a read model are valid");
        for (name, theirs) in &other.models {
            let ours = self.models.entry(name.clone()).or_insert_with(empty);
            ours.merge(theirs)
                .expect("groups of merging totals merge: same parameters, smaller counts");
        }
        for model in self.models.values_mut() {
            if model.params() != *params {
                let mut down = empty();
                down.merge(model)
                    .expect("a distinct count merges into one of a smaller lg_k");
                *model = down;
            }
        }
        self.max_groups = self.max_groups.max(other.max_groups);
        self.without_group += other.without_group;
        self.past_max_groups += other.past_max_groups;
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&self.max_groups.to_le_bytes());
        bytes.extend_from_slice(&self.without_group.to_le_bytes());
        bytes.extend_from_slice(&self.past_max_groups.to_le_bytes());
        let count = u32::try_from(self.models.len()).expect("fewer than 2^32 groups");
        bytes.extend_from_slice(&count.to_le_bytes());
        for (name, model) in &self.models {
            let model = model.to_bytes();
            for part in [name.as_bytes(), &model] {
                let len = u32::try_from(part.len()).expect("group parts are below 4 GiB");
                bytes.extend_from_slice(&len.to_le_bytes());
                bytes.extend_from_slice(part);
            }
        }
        bytes
    }

    /// Decodes the groups payload of a total with `total`'s kind, parameters and event count.
    pub(crate) fn decode(payload: &[u8], total: &ReadModel) -> Result<Groups, ReadModelError> {
        let corrupt = |reason: String| ReadModelError::CorruptSketch {
            sketch: "groups",
            reason,
        };
        let mut rest = payload;
        let mut take = |what: &str, len: usize| -> Result<&[u8], ReadModelError> {
            if rest.len() < len {
                return Err(corrupt(format!(
                    "{what} needs {len} bytes but {} remain",
                    rest.len()
                )));
            }
            let (head, tail) = rest.split_at(len);
            rest = tail;
            Ok(head)
        };
        let u32_of = |bytes: &[u8]| u32::from_le_bytes(bytes.try_into().expect("4 bytes"));
        let u64_of = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("8 bytes"));

        let max_groups = u32_of(take("max_groups", 4)?);
        if !(1..=MAX_GROUPS).contains(&max_groups) {
            return Err(corrupt(format!(
                "max_groups is {max_groups}, outside 1..={MAX_GROUPS}"
            )));
        }
        let without_group = u64_of(take("without_group", 8)?);
        let past_max_groups = u64_of(take("past_max_groups", 8)?);
        let count = u32_of(take("group count", 4)?);
        let mut groups = Groups {
            max_groups,
            models: BTreeMap::new(),
            without_group,
            past_max_groups,
        };
        let mut previous: Option<String> = None;
        for index in 0..count {
            let len = u32_of(take("group name length", 4)?) as usize;
            let name = std::str::from_utf8(take("group name", len)?)
                .map_err(|e| corrupt(format!("group #{index} has a name that is not UTF-8: {e}")))?
                .to_owned();
            if name.is_empty() {
                return Err(corrupt(format!("group #{index} has an empty name")));
            }
            if previous.as_ref().is_some_and(|previous| *previous >= name) {
                return Err(corrupt(format!(
                    "group `{name}` is out of order or repeated; names must ascend"
                )));
            }
            let len = u32_of(take("group read model length", 4)?) as usize;
            let bytes = take("group read model", len)?;
            // Checked before decoding: a group that is itself grouped would recurse as deep as
            // the bytes nest, and a crafted value of some 65 KB would overflow the stack.
            if bytes.get(3).is_some_and(|kind| kind & GROUPED != 0) {
                return Err(corrupt(format!("group `{name}` is itself grouped")));
            }
            let model = ReadModel::from_bytes(bytes).map_err(|e| {
                let reason = e.to_string();
                let reason = reason
                    .strip_suffix(REBUILD_HINT)
                    .unwrap_or(&reason)
                    .to_owned();
                corrupt(format!(
                    "the read model of group `{name}` is refused: {reason}"
                ))
            })?;
            if model.is_grouped() || model.params() != total.params() {
                return Err(corrupt(format!(
                    "group `{name}` has other parameters than its total"
                )));
            }
            if model.events() == 0 {
                return Err(corrupt(format!("group `{name}` counts no event")));
            }
            groups.models.insert(name.clone(), model);
            previous = Some(name);
        }
        if !rest.is_empty() {
            return Err(corrupt(format!(
                "{} unexpected bytes after the last group",
                rest.len()
            )));
        }
        if groups.events() != Some(total.events()) {
            return Err(corrupt(format!(
                "the groups count {} events, but the total {}",
                groups
                    .events()
                    .map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string()),
                total.events()
            )));
        }
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::Kind;

    fn grouped(lg_k: u8, max_groups: u32) -> ReadModel {
        ReadModel::new_grouped(&SketchParams::Distinct { lg_k }, max_groups).unwrap()
    }

    /// Users u0.. spread over channels: user i edits channel i % channels.
    fn fold(model: &mut ReadModel, users: std::ops::Range<u32>, channels: u32) {
        for i in users {
            let group = format!("#c{}", i % channels);
            model.update_in(&format!("u{i}"), Some(&group));
        }
    }

    #[test]
    fn values_go_to_their_group_and_the_total() {
        let mut model = grouped(12, 10);
        fold(&mut model, 0..300, 3);
        assert_eq!(
            model.update_in("u-none", None),
            Some(GroupUpdate::WithoutGroup)
        );
        assert_eq!(
            model.update_in("u-empty", Some("")),
            Some(GroupUpdate::WithoutGroup)
        );
        assert_eq!(model.events(), 302);
        let total = model.distinct().unwrap().estimate;
        assert!((total - 302.0).abs() <= 302.0 * 0.05, "{total}");
        let groups = model.groups().unwrap();
        assert_eq!(
            groups.keys().collect::<Vec<_>>(),
            ["#c0", "#c1", "#c2"],
            "groups are named by the group value"
        );
        for group in groups.values() {
            assert_eq!(group.events(), 100);
            assert!(!group.is_grouped());
            let estimate = group.distinct().unwrap().estimate;
            assert!((estimate - 100.0).abs() <= 5.0, "{estimate}");
        }
        assert_eq!(model.without_group(), 2);
        assert_eq!(model.past_max_groups(), 0);
        assert_eq!(model.group("#nowhere").unwrap().events(), 0);
    }

    #[test]
    fn values_past_max_groups_count_in_the_total_only() {
        let mut model = grouped(12, 2);
        fold(&mut model, 0..30, 3);
        assert_eq!(model.groups().unwrap().len(), 2);
        assert_eq!(model.past_max_groups(), 10);
        assert_eq!(model.events(), 30);
        assert_eq!(
            model.update_in("u0", Some("#c0")),
            Some(GroupUpdate::Grouped),
            "an existing group still takes values"
        );
        assert_eq!(
            model.update_in("u2", Some("#c2")),
            Some(GroupUpdate::PastMaxGroups)
        );
        let back = ReadModel::from_bytes(&model.to_bytes()).unwrap();
        assert_eq!(back.past_max_groups(), 11);
        assert_eq!(back.max_groups(), Some(2));
    }

    #[test]
    fn bytes_round_trip_and_ungrouped_bytes_are_unchanged() {
        let mut model = grouped(12, 10);
        fold(&mut model, 0..500, 7);
        model.update_in("x", None);
        let bytes = model.to_bytes();
        assert_eq!(bytes[3], 0x81, "grouped distinct kind byte");
        let back = ReadModel::from_bytes(&bytes).unwrap();
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.groups().unwrap().len(), 7);

        let mut plain = ReadModel::new(&SketchParams::Distinct { lg_k: 12 }).unwrap();
        plain.update("x");
        assert_eq!(plain.to_bytes()[3], 1);

        let mut top = ReadModel::new_grouped(&SketchParams::default_for(Kind::Top), 5).unwrap();
        top.update_in("/a", Some("GET"));
        top.update_in("/a", Some("POST"));
        top.update_in("/b", Some("GET"));
        let bytes = top.to_bytes();
        assert_eq!(bytes[3], 0xC2, "grouped top with its item filter");
        let back = ReadModel::from_bytes(&bytes).unwrap();
        assert_eq!(back.to_bytes(), bytes);
        let get = back.group("GET").unwrap();
        assert_eq!(get.count("/a").unwrap().estimate, 1);
        assert_eq!(back.count("/a").unwrap().estimate, 2);
    }

    /// The groups payload of `model`'s bytes replaced by `groups`.
    fn with_groups(model: &ReadModel, groups: &Groups) -> Vec<u8> {
        let bytes = model.to_bytes();
        let old = model.groups.as_ref().unwrap().encode();
        let mut out = bytes[..bytes.len() - old.len() - 4].to_vec();
        let new = groups.encode();
        out.extend_from_slice(&(new.len() as u32).to_le_bytes());
        out.extend_from_slice(&new);
        out
    }

    #[test]
    fn corrupt_groups_are_refused_with_the_reason() {
        let mut model = grouped(12, 10);
        fold(&mut model, 0..20, 2);
        let good = model.groups.as_ref().unwrap().as_ref().clone();

        let mut miscounted = good.clone();
        miscounted.without_group += 1;
        let error = ReadModel::from_bytes(&with_groups(&model, &miscounted)).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("the groups count 21 events, but the total 20"),
            "{error}"
        );

        let mut empty_name = good.clone();
        let first = empty_name.models.pop_first().unwrap().1;
        empty_name.models.insert(String::new(), first);
        let error = ReadModel::from_bytes(&with_groups(&model, &empty_name)).unwrap_err();
        assert!(error.to_string().contains("empty name"), "{error}");

        let mut other_params = good.clone();
        let mut wide = ReadModel::new(&SketchParams::Distinct { lg_k: 14 }).unwrap();
        for i in 0..10 {
            wide.update(&format!("u{}", i * 2));
        }
        other_params.models.insert("#c0".to_owned(), wide);
        let error = ReadModel::from_bytes(&with_groups(&model, &other_params)).unwrap_err();
        assert!(error.to_string().contains("other parameters"), "{error}");

        let mut bytes = model.to_bytes();
        bytes[3] = 0x83;
        let error = ReadModel::from_bytes(&bytes).unwrap_err();
        assert!(
            matches!(error, ReadModelError::UnknownKind { found: 0x83 }),
            "{error}"
        );

        let mut bytes = model.to_bytes();
        bytes.push(0);
        assert!(ReadModel::from_bytes(&bytes).is_err());
    }

    #[test]
    fn merge_equals_one_model_fed_both_streams() {
        let mut left = grouped(12, 10);
        fold(&mut left, 0..400, 4);
        let mut right = grouped(12, 10);
        fold(&mut right, 200..900, 6);
        right.update_in("late", None);
        let mut both = grouped(12, 10);
        fold(&mut both, 0..400, 4);
        fold(&mut both, 200..900, 6);
        both.update_in("late", None);

        left.merge(&right).unwrap();
        assert_eq!(left.events(), 1101);
        assert_eq!(left.without_group(), 1);
        let (merged, direct) = (left.groups().unwrap(), both.groups().unwrap());
        assert_eq!(
            merged.keys().collect::<Vec<_>>(),
            direct.keys().collect::<Vec<_>>()
        );
        // A union and a sketch fed both streams hold the same registers; the composite
        // estimate, which reads only the registers, agrees to rounding.
        for (name, model) in merged {
            let other = &direct[name];
            assert_eq!(model.events(), other.events(), "{name}");
            let (m, d) = (model.distinct().unwrap(), other.distinct().unwrap());
            assert!(
                (m.estimate - d.estimate).abs() <= d.estimate * 0.02,
                "{name}: {m:?} {d:?}"
            );
        }
        let (m, d) = (left.distinct().unwrap(), both.distinct().unwrap());
        assert!(
            (m.estimate - d.estimate).abs() <= d.estimate * 0.02,
            "{m:?} {d:?}"
        );
        let back = ReadModel::from_bytes(&left.to_bytes()).unwrap();
        assert_eq!(back.to_bytes(), left.to_bytes());
    }

    #[test]
    fn merge_keeps_every_group_past_max_groups_and_merges_lg_k_down() {
        let mut left = grouped(14, 2);
        fold(&mut left, 0..10, 2);
        let mut right = grouped(12, 2);
        for i in 0..10 {
            right.update_in(
                &format!("v{i}"),
                Some(if i % 2 == 0 { "#c1" } else { "#c9" }),
            );
        }
        left.merge(&right).unwrap();
        let groups = left.groups().unwrap();
        assert_eq!(groups.keys().collect::<Vec<_>>(), ["#c0", "#c1", "#c9"]);
        for group in groups.values() {
            assert_eq!(group.params(), SketchParams::Distinct { lg_k: 12 });
        }
        let back = ReadModel::from_bytes(&left.to_bytes()).unwrap();
        assert_eq!(back.group("#c1").unwrap().events(), 10);
    }

    #[test]
    fn grouped_and_ungrouped_do_not_merge() {
        let mut model = grouped(12, 10);
        fold(&mut model, 0..10, 2);
        let before = model.to_bytes();
        let mut plain = ReadModel::new(&SketchParams::Distinct { lg_k: 12 }).unwrap();
        plain.update("u1");
        let error = model.merge(&plain).unwrap_err();
        assert!(error.to_string().contains("grouped"), "{error}");
        assert_eq!(model.to_bytes(), before);
        assert!(plain.merge(&model).is_err());
    }

    #[test]
    fn max_groups_is_checked() {
        for bad in [0, MAX_GROUPS + 1] {
            let error =
                ReadModel::new_grouped(&SketchParams::Distinct { lg_k: 12 }, bad).unwrap_err();
            assert!(error.to_string().contains("max_groups"), "{error}");
        }
    }

    #[test]
    fn a_group_that_is_itself_grouped_is_refused_without_recursing() {
        let mut leaf = ReadModel::new(&SketchParams::Distinct { lg_k: 12 }).unwrap();
        leaf.update("x");
        let leaf_bytes = leaf.to_bytes();
        let hll = {
            let len = u32::from_le_bytes(leaf_bytes[12..16].try_into().unwrap()) as usize;
            leaf_bytes[16..16 + len].to_vec()
        };
        // 2,000 levels of a grouped read model whose one group is the level below: decoding
        // must stop at the first level, not recurse 2,000 deep.
        let mut bytes = leaf_bytes.clone();
        for _ in 0..2_000 {
            let mut groups = Vec::new();
            groups.extend_from_slice(&1u32.to_le_bytes());
            groups.extend_from_slice(&0u64.to_le_bytes());
            groups.extend_from_slice(&0u64.to_le_bytes());
            groups.extend_from_slice(&1u32.to_le_bytes());
            groups.extend_from_slice(&1u32.to_le_bytes());
            groups.push(b'a');
            groups.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            groups.extend_from_slice(&bytes);
            let mut next = leaf_bytes[..12].to_vec();
            next[3] = 0x81;
            for payload in [&hll, &groups] {
                next.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                next.extend_from_slice(payload);
            }
            bytes = next;
        }
        let error = ReadModel::from_bytes(&bytes).unwrap_err().to_string();
        assert!(error.contains("group `a` is itself grouped"), "{error}");
        assert_eq!(
            error.matches("rebuild the read model").count(),
            1,
            "the hint once: {error}"
        );
    }

    #[test]
    fn a_corrupt_group_names_the_fix_once() {
        let mut model = grouped(12, 10);
        fold(&mut model, 0..20, 2);
        let mut groups = model.groups.as_ref().unwrap().as_ref().clone();
        let mut top = ReadModel::new(&SketchParams::default_for(Kind::Top)).unwrap();
        top.update("u0");
        groups.models.insert("#c0".to_owned(), top);
        let error = ReadModel::from_bytes(&with_groups(&model, &groups))
            .unwrap_err()
            .to_string();
        assert_eq!(
            error.matches("rebuild the read model").count(),
            1,
            "{error}"
        );
    }
}
