//! Canonical order for the order-free parts of DataSketches images, so that equal sketch
//! contents are stored as equal bytes.
//!
//! Two images of the library are written in the order of an internal hash table whose layout
//! depends on the order of insertion, and decoding an image inserts its entries again, in image
//! order, into a fresh table: the HLL coupon list or set (LIST and SET modes) and the
//! frequent-items entries. Re-encoding a decoded sketch can therefore reorder those entries. The
//! functions here sort them (coupons ascending; frequent items by item bytes, each with its
//! count), which every DataSketches reader accepts because it rebuilds its table anyway.
//!
//! Guarantee: the output is a valid image of the same sketch, and it depends only on the set of
//! entries, so decoding it and canonicalizing the re-encoded image gives the same bytes.

/// HLL image preamble: byte 0 holds the preamble length in 32-bit words.
const HLL_LIST_PREINTS: u8 = 2;
const HLL_SET_PREINTS: u8 = 3;
/// Bytes before the first coupon in LIST and SET images.
const HLL_LIST_PREAMBLE: usize = 8;
const HLL_SET_PREAMBLE: usize = 12;
/// Byte 7 of an HLL image; its low two bits are the current mode.
const HLL_MODE_BYTE: usize = 7;
const HLL_MODE_LIST: u8 = 0;
const HLL_MODE_SET: u8 = 1;
/// Byte 5 of an HLL image; the compact flag says only occupied slots are written.
const HLL_FLAGS_BYTE: usize = 5;
const HLL_COMPACT_FLAG: u8 = 8;

/// Frequent-items image: a non-empty image has four preamble longs, the active item count at
/// bytes 8..12, then one u64 count per item, then each item as a u32 length and its bytes.
const FREQUENT_NONEMPTY_PRELONGS: u8 = 4;
const FREQUENT_PREAMBLE: usize = 32;

/// Sorts the coupons of a compact LIST or SET mode HLL image; other images are returned as
/// they are (HLL mode images are register arrays, already in a fixed order).
pub(crate) fn hll_image(mut image: Vec<u8>) -> Vec<u8> {
    if image.len() < HLL_LIST_PREAMBLE || image[HLL_FLAGS_BYTE] & HLL_COMPACT_FLAG == 0 {
        return image;
    }
    let start = match (image[0], image[HLL_MODE_BYTE] & 0x3) {
        (HLL_LIST_PREINTS, HLL_MODE_LIST) => HLL_LIST_PREAMBLE,
        (HLL_SET_PREINTS, HLL_MODE_SET) => HLL_SET_PREAMBLE,
        _ => return image,
    };
    let Some(coupon_bytes) = image.get_mut(start..) else {
        return image;
    };
    if coupon_bytes.len() % 4 != 0 {
        return image;
    }
    let mut coupons: Vec<u32> = coupon_bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    coupons.sort_unstable();
    for (slot, coupon) in coupon_bytes.chunks_exact_mut(4).zip(coupons) {
        slot.copy_from_slice(&coupon.to_le_bytes());
    }
    image
}

/// Sorts the entries of a non-empty frequent-items image of strings by item bytes, keeping each
/// count with its item; any other image is returned as it is.
pub(crate) fn frequent_items_image(image: Vec<u8>) -> Vec<u8> {
    if image.len() < FREQUENT_PREAMBLE || image[0] & 0x3f != FREQUENT_NONEMPTY_PRELONGS {
        return image;
    }
    let active = u32::from_le_bytes(image[8..12].try_into().expect("4 bytes")) as usize;
    let items_at = FREQUENT_PREAMBLE + active * 8;
    let Some(count_bytes) = image.get(FREQUENT_PREAMBLE..items_at) else {
        return image;
    };
    let counts = count_bytes.chunks_exact(8);

    let mut items: Vec<&[u8]> = Vec::with_capacity(active);
    let mut at = items_at;
    for _ in 0..active {
        let Some(len) = image.get(at..at + 4) else {
            return image;
        };
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(item) = image.get(at..at + 4 + len) else {
            return image;
        };
        items.push(item);
        at += 4 + len;
    }
    if at != image.len() {
        return image;
    }

    // Each item is kept with its length prefix; items are distinct, so sorting by the bytes
    // after the prefix is a total order.
    let mut entries: Vec<(&[u8], &[u8])> = items.into_iter().zip(counts).collect();
    entries.sort_unstable_by(|a, b| a.0[4..].cmp(&b.0[4..]));

    let mut sorted = Vec::with_capacity(image.len());
    sorted.extend_from_slice(&image[..FREQUENT_PREAMBLE]);
    for (_, count) in &entries {
        sorted.extend_from_slice(count);
    }
    for (item, _) in &entries {
        sorted.extend_from_slice(item);
    }
    sorted
}

#[cfg(test)]
mod tests {
    use datasketches::frequencies::FrequentItemsSketch;
    use datasketches::hash::value::raw_bytes;
    use datasketches::hll::{HllSketch, HllType};

    use super::*;

    #[test]
    fn hll_set_images_are_independent_of_insertion_order() {
        let values: Vec<String> = (0..300).map(|i| format!("v{i}")).collect();
        let mut forward = HllSketch::new(12, HllType::Hll8).unwrap();
        let mut backward = HllSketch::new(12, HllType::Hll8).unwrap();
        for value in &values {
            forward.update(raw_bytes::from_str(value));
        }
        for value in values.iter().rev() {
            backward.update(raw_bytes::from_str(value));
        }
        let (f, b) = (forward.serialize(), backward.serialize());
        assert_eq!(f[0], HLL_SET_PREINTS, "the test needs a SET mode sketch");
        assert_ne!(f, b, "the library image depends on insertion order");
        assert_eq!(hll_image(f.clone()), hll_image(b));

        let decoded = HllSketch::deserialize(&hll_image(f.clone())).unwrap();
        assert_eq!(decoded.estimate(), forward.estimate());
        assert_eq!(hll_image(decoded.serialize()), hll_image(f));
    }

    #[test]
    fn hll_list_and_array_images_keep_their_content() {
        let mut list = HllSketch::new(12, HllType::Hll8).unwrap();
        for value in ["c", "a", "b"] {
            list.update(raw_bytes::from_str(value));
        }
        let image = list.serialize();
        assert_eq!(image[0], HLL_LIST_PREINTS);
        let canonical = hll_image(image.clone());
        assert_eq!(canonical.len(), image.len());
        assert_eq!(
            HllSketch::deserialize(&canonical).unwrap().estimate(),
            list.estimate()
        );

        let mut array = HllSketch::new(4, HllType::Hll8).unwrap();
        for i in 0..1000 {
            array.update(raw_bytes::from_str(&i.to_string()));
        }
        let image = array.serialize();
        assert_eq!(hll_image(image.clone()), image);
    }

    #[test]
    fn frequent_items_images_are_independent_of_insertion_order() {
        let values: Vec<String> = (0..40).map(|i| format!("item-{}", i * 37 % 41)).collect();
        let mut forward = FrequentItemsSketch::<String>::new(64).unwrap();
        let mut backward = FrequentItemsSketch::<String>::new(64).unwrap();
        for (i, value) in values.iter().enumerate() {
            forward.update_with_count(value.clone(), i as u64 + 1);
        }
        for (i, value) in values.iter().enumerate().rev() {
            backward.update_with_count(value.clone(), i as u64 + 1);
        }
        let (f, b) = (forward.serialize(), backward.serialize());
        assert_eq!(frequent_items_image(f.clone()), frequent_items_image(b));

        let decoded =
            FrequentItemsSketch::<String>::deserialize(&frequent_items_image(f.clone())).unwrap();
        for (i, value) in values.iter().enumerate() {
            assert_eq!(decoded.estimate(value.as_str()), i as u64 + 1);
        }
        assert_eq!(
            frequent_items_image(decoded.serialize()),
            frequent_items_image(f)
        );

        let empty = FrequentItemsSketch::<String>::new(64).unwrap().serialize();
        assert_eq!(frequent_items_image(empty.clone()), empty);
    }
}
