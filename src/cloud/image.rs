//! Which machine image to launch, and who logs in to it.

use anyhow::{Context, Result, bail};
use aws_sdk_ec2::types::{Filter, InstanceType, PlacementGroupStrategy};

use super::{AwsResultExt, Cloud};

#[derive(Debug, Clone)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub architecture: String,
    /// When it was made, ISO 8601 (which sorts as text).
    pub created: String,
    /// The EBS root volume the image boots from, if it has one.
    pub root_volume: Option<RootVolume>,
}

#[derive(Debug, Clone)]
pub struct RootVolume {
    pub device: String,
    pub snapshot_id: String,
    pub size_gib: i32,
}

impl Image {
    fn from_sdk(image: &aws_sdk_ec2::types::Image) -> Option<Image> {
        let root_device = image.root_device_name();
        let root_volume = image
            .block_device_mappings()
            .iter()
            .find(|mapping| mapping.device_name().is_some() && mapping.device_name() == root_device)
            .and_then(|mapping| {
                let ebs = mapping.ebs()?;
                Some(RootVolume {
                    device: mapping.device_name()?.to_string(),
                    snapshot_id: ebs.snapshot_id()?.to_string(),
                    size_gib: ebs.volume_size()?,
                })
            });
        Some(Image {
            id: image.image_id()?.to_string(),
            name: image.name().unwrap_or_default().to_string(),
            architecture: image.architecture().map_or("", |a| a.as_str()).to_string(),
            created: image.creation_date().unwrap_or_default().to_string(),
            root_volume,
        })
    }
}

impl Cloud {
    /// The image with this id.
    pub async fn image_by_id(&self, id: &str) -> Result<Image> {
        let found = self
            .ec2
            .describe_images()
            .image_ids(id)
            .send()
            .await
            .explain(format_args!("look up image {id} in {}", self.region))?;
        found
            .images()
            .first()
            .and_then(Image::from_sdk)
            .with_context(|| {
                format!(
                    "image {id} does not exist in {}: check --image-id",
                    self.region
                )
            })
    }

    /// The available Amazon-owned images whose name matches `pattern`, for any architecture:
    /// asked once, beside the types' lookup, then chosen for each type (`newest_for`).
    pub async fn images_named(&self, pattern: &str) -> Result<Vec<Image>> {
        let found = self
            .ec2
            .describe_images()
            .owners("amazon")
            .filters(Filter::builder().name("name").values(pattern).build())
            .filters(Filter::builder().name("state").values("available").build())
            .send()
            .await
            .explain(format_args!(
                "look up images named \"{pattern}\" in {}",
                self.region
            ))?;
        Ok(found.images().iter().filter_map(Image::from_sdk).collect())
    }

    /// What an instance of each of `names` has, in that order, asked in one request; fails
    /// when one is not offered here.
    pub async fn instance_types(&self, names: &[&str]) -> Result<Vec<TypeInfo>> {
        let found = self
            .ec2
            .describe_instance_types()
            .set_instance_types(Some(names.iter().map(|&n| InstanceType::from(n)).collect()))
            .send()
            .await
            .explain(format_args!(
                "look up instance type {} in {}",
                names.join(", "),
                self.region
            ))?;
        let known: Vec<TypeInfo> = found
            .instance_types()
            .iter()
            .filter_map(type_info)
            .collect();
        (names.iter())
            .map(|&name| {
                let info = known.iter().find(|info| info.name == name);
                info.cloned().with_context(|| {
                    format!(
                        "instance type {name} is not offered in {}: check --instance-type \
                         (and --fallback-types)",
                        self.region
                    )
                })
            })
            .collect()
    }
}

/// The newest of `images` that an instance of `kind` can run (the newest match of a name is
/// often built for another architecture).
pub fn newest_for(images: &[Image], kind: &TypeInfo) -> Option<Image> {
    (images.iter())
        .filter(|image| kind.architectures.contains(&image.architecture))
        .max_by(|a, b| a.created.cmp(&b.created))
        .cloned()
}

/// What DescribeInstanceTypes says of one type; `None` without a name or an architecture.
fn type_info(info: &aws_sdk_ec2::types::InstanceTypeInfo) -> Option<TypeInfo> {
    let architectures: Vec<String> = (info.processor_info())
        .map(|p| p.supported_architectures())
        .unwrap_or_default()
        .iter()
        .map(|a| a.as_str().to_string())
        .collect();
    if architectures.is_empty() {
        return None;
    }
    let gpus = info
        .gpu_info()
        .map(|g| g.gpus())
        .unwrap_or_default()
        .iter()
        .map(|gpu| Gpus {
            count: gpu.count().unwrap_or(0),
            maker: gpu.manufacturer().unwrap_or_default().to_string(),
            model: gpu.name().unwrap_or_default().to_string(),
            memory_mib: gpu.memory_info().and_then(|m| m.size_in_mib()),
        })
        .collect();
    Some(TypeInfo {
        name: info.instance_type()?.as_str().to_string(),
        architectures,
        vcpus: info.v_cpu_info().and_then(|v| v.default_v_cpus()),
        memory_mib: info.memory_info().and_then(|m| m.size_in_mib()),
        gpus,
        cluster_placement: info.placement_group_info().is_some_and(|p| {
            p.supported_strategies()
                .contains(&PlacementGroupStrategy::Cluster)
        }),
        efa: info
            .network_info()
            .and_then(|n| n.efa_supported())
            .unwrap_or(false),
    })
}

/// What an instance type offers, as DescribeInstanceTypes says.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TypeInfo {
    pub name: String,
    pub architectures: Vec<String>,
    pub vcpus: Option<i32>,
    pub memory_mib: Option<i64>,
    pub gpus: Vec<Gpus>,
    /// Instances of it can share a cluster placement group (low latency between them).
    pub cluster_placement: bool,
    /// It takes an Elastic Fabric Adapter.
    pub efa: bool,
}

impl TypeInfo {
    /// Fails, saying what to change, when an instance of this type cannot boot `image`.
    pub fn check_runs(&self, image: &Image) -> Result<()> {
        if !self.architectures.contains(&image.architecture) {
            bail!(
                "image {} is built for {}, but a {} runs {}: pick a matching --instance-type or \
                 image",
                image.id,
                image.architecture,
                self.name,
                self.architectures.join(", ")
            );
        }
        Ok(())
    }
}

/// GPUs of one model in an instance type.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Gpus {
    pub count: i32,
    pub maker: String,
    pub model: String,
    /// Each GPU's own.
    pub memory_mib: Option<i32>,
}

/// The default login user of well-known images, from the image name (as the original tool did).
pub fn guess_user(image_name: &str) -> &'static str {
    let name = image_name.to_ascii_lowercase();
    const KNOWN: [(&str, &str); 7] = [
        ("ubuntu", "ubuntu"),
        ("debian", "admin"),
        ("centos", "centos"),
        ("fedora", "fedora"),
        ("rocky", "rocky"),
        ("bitnami", "bitnami"),
        ("suse", "ec2-user"),
    ];
    KNOWN
        .iter()
        .find(|(needle, _)| name.contains(needle))
        .map_or("ec2-user", |(_, user)| user)
}

#[cfg(test)]
mod tests {
    use super::guess_user;

    #[test]
    fn users_follow_the_image_family() {
        assert_eq!(
            guess_user("Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 2026"),
            "ubuntu"
        );
        assert_eq!(
            guess_user("al2023-ami-2023.6-kernel-6.1-x86_64"),
            "ec2-user"
        );
        assert_eq!(guess_user("debian-12-amd64-2026"), "admin");
        assert_eq!(
            guess_user("Deep Learning AMI (Amazon Linux 2023)"),
            "ec2-user"
        );
    }
}
