//! Azure Service Tags, the weekly `ServiceTags_Public_YYYYMMDD.json` (no stable URL: a file
//! path, or a URL the operator keeps current): `{changeNumber, cloud, values: [{name, id,
//! properties: {changeNumber, region, addressPrefixes: [...]}}]}`, IPv4 and IPv6 in one list.
//! A prefix is in several tags (a region's and the service's); it counts once.

use serde::Deserialize;

use super::{Collect, Kind, Ranges, SourceError, describe, json, passes};

/// Which tags to take, by `name` (`AzureFrontDoor.Frontend`, `AzureCloud.westeurope`, ...);
/// empty takes every tag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub tags: Vec<String>,
}

#[derive(Deserialize)]
struct File {
    #[serde(rename = "changeNumber")]
    change_number: u64,
    values: Vec<Tag>,
}

#[derive(Deserialize)]
struct Tag {
    name: String,
    properties: Properties,
}

#[derive(Deserialize)]
struct Properties {
    #[serde(rename = "addressPrefixes")]
    address_prefixes: Vec<String>,
}

/// The prefixes of the tags `filter` takes; the version is the file's `changeNumber`.
pub fn parse(body: &[u8], filter: &Filter) -> Result<Ranges, SourceError> {
    let file: File = json(Kind::AzureServiceTags, body)?;
    let mut collect = Collect::new(Kind::AzureServiceTags);
    let mut entries = 0;
    for (i, tag) in file.values.iter().enumerate() {
        entries += tag.properties.address_prefixes.len();
        let takes = passes(&filter.tags, &tag.name);
        for (j, prefix) in tag.properties.address_prefixes.iter().enumerate() {
            collect.add(takes, prefix, || {
                format!("values[{i}] ({}).addressPrefixes[{j}]", tag.name)
            })?;
        }
    }
    collect.finish(Some(file.change_number.to_string()), entries, || {
        describe("tag", &filter.tags)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    static FILE: &[u8] =
        include_bytes!("../../../tests/fixtures/providers/azure-service-tags-public-363.json");

    fn tags(names: &[&str]) -> Filter {
        Filter {
            tags: names.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn front_door_and_the_whole_file() {
        let front_door = parse(FILE, &tags(&["AzureFrontDoor.Frontend"])).unwrap();
        assert_eq!((front_door.v4.len(), front_door.v6.len()), (90, 102));
        assert_eq!(front_door.version.as_deref(), Some("363"));
        assert_eq!(front_door.v4[0].to_string(), "4.232.98.112/29");
        let all = parse(FILE, &Filter::default()).unwrap();
        // 90,493 entries over 2,967 tags, most of them repeated across tags.
        assert!(all.len() < 90_493 && all.len() > 10_000, "{}", all.len());
        let two = parse(
            FILE,
            &tags(&["AzureFrontDoor.Frontend", "AzureFrontDoor.Backend"]),
        )
        .unwrap();
        assert!(two.len() > front_door.len());
    }

    #[test]
    fn bad_answers_name_what_and_where() {
        let bad = |body: &str| {
            parse(body.as_bytes(), &Filter::default())
                .unwrap_err()
                .to_string()
        };
        assert!(bad("<html/>").contains("HTML"));
        assert!(
            bad(r#"{"changeNumber":1,"values":[{"name":"A""#).contains("azure-service-tags: not")
        );
        assert_eq!(
            parse(FILE, &tags(&["NoSuchTag"])).unwrap_err().to_string(),
            "azure-service-tags: no prefix matched the filter (tag: NoSuchTag) among 90493 entries"
        );
        assert_eq!(
            bad(
                r#"{"changeNumber":1,"cloud":"Public","values":[{"name":"A","id":"A",
                "properties":{"addressPrefixes":["13.73.248.8/29","13.73.248.9/29"]}}]}"#
            ),
            "azure-service-tags: values[0] (A).addressPrefixes[1]: \"13.73.248.9/29\" has host \
             bits set (the prefix is 13.73.248.8/29)"
        );
    }
}
