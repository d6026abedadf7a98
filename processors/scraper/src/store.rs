//! Identity and change detection: every therapist the scraper has seen,
//! with a fingerprint of what was published, and which complete areas
//! contained whom.

use crate::therapist::Therapist;
use sqlx::PgConnection;
use uuid::Uuid;

/// Namespace of therapist ids derived from source ids and name keys.
const NAMESPACE: Uuid = Uuid::from_u128(0x5c7e_1a52_8f0b_4d6e_9a31_7b2c_0e4f_6d18);

/// What one observation of a therapist amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Never seen before.
    New,
    /// Removed earlier, published again.
    Returned,
    /// These fields differ from what was seen last.
    Changed(Vec<String>),
    /// Nothing differs.
    Unchanged,
}

/// The therapist's id and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The stable therapist id.
    pub therapist_id: Uuid,
    /// What changed.
    pub change: Change,
    /// Whether the practice address changed (or is new): its position
    /// must be looked up again when the source gave none.
    pub address_changed: bool,
}

/// A known therapist: id, source id, details, fingerprint, removed.
type Known = (Uuid, Option<String>, serde_json::Value, Vec<u8>, bool);

/// The id of a therapist: from the source id, else from name and postcode.
pub fn therapist_id(therapist: &Therapist) -> Uuid {
    match &therapist.source_id {
        Some(id) => Uuid::new_v5(&NAMESPACE, format!("kbv:{id}").as_bytes()),
        None => Uuid::new_v5(
            &NAMESPACE,
            format!("name:{}", therapist.name_key()).as_bytes(),
        ),
    }
}

/// Records one observation of `therapist` in run `run_id`.
pub async fn observe(
    db: &mut PgConnection,
    therapist: &Therapist,
    run_id: &str,
) -> Result<Observed, sqlx::Error> {
    let name_key = therapist.name_key();
    let mut existing: Option<Known> = None;
    if let Some(source_id) = &therapist.source_id {
        existing = sqlx::query_as(
            "SELECT therapist_id, source_id, details, fingerprint, removed
               FROM scraper.therapists WHERE source_id = $1",
        )
        .bind(source_id)
        .fetch_optional(&mut *db)
        .await?;
    }
    if existing.is_none() {
        // Without an id match, the same name at the same postcode is the
        // same therapist unless both sides carry different source ids.
        existing = sqlx::query_as(
            "SELECT therapist_id, source_id, details, fingerprint, removed
               FROM scraper.therapists
              WHERE name_key = $1 AND (source_id IS NULL OR $2::text IS NULL)
              ORDER BY first_seen LIMIT 1",
        )
        .bind(&name_key)
        .bind(&therapist.source_id)
        .fetch_optional(&mut *db)
        .await?;
    }
    let details = therapist.details_json();
    let flags = serde_json::json!(therapist.flags);
    let fingerprint = therapist.fingerprint();
    let Some((id, source_id, old_details, old_fingerprint, removed)) = existing else {
        let id = therapist_id(therapist);
        sqlx::query(
            "INSERT INTO scraper.therapists
                    (therapist_id, source_id, name_key, details, flags, fingerprint, last_run)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(&therapist.source_id)
        .bind(&name_key)
        .bind(&details)
        .bind(&flags)
        .bind(&fingerprint[..])
        .bind(run_id)
        .execute(&mut *db)
        .await?;
        return Ok(Observed {
            therapist_id: id,
            change: Change::New,
            address_changed: true,
        });
    };
    let address_changed = old_details["address"] != details["address"];
    let change = if removed {
        Change::Returned
    } else if old_fingerprint == fingerprint {
        Change::Unchanged
    } else {
        let mut fields: Vec<String> = details
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(name, value)| old_details.get(name.as_str()) != Some(value))
            .map(|(name, _)| name.clone())
            .collect();
        if fields.is_empty() {
            fields.push("flags".to_string());
        }
        Change::Changed(fields)
    };
    sqlx::query(
        "UPDATE scraper.therapists
            SET source_id = coalesce(source_id, $2), name_key = $3, details = $4, flags = $5,
                fingerprint = $6, removed = false, last_seen = now(), last_run = $7
          WHERE therapist_id = $1",
    )
    .bind(id)
    .bind(source_id.or_else(|| therapist.source_id.clone()))
    .bind(&name_key)
    .bind(&details)
    .bind(&flags)
    .bind(&fingerprint[..])
    .bind(run_id)
    .execute(&mut *db)
    .await?;
    Ok(Observed {
        therapist_id: id,
        change,
        address_changed,
    })
}

/// Records a complete scrape of `area_key` that found `seen`: they are
/// members with nothing missed; members not found miss one more; members
/// missing from `remove_after` complete scrapes leave the area, and
/// therapists left in no area are removed. Returns the removed ids.
pub async fn complete_area(
    db: &mut PgConnection,
    area_key: &str,
    seen: &[Uuid],
    remove_after: i32,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query(
        "INSERT INTO scraper.area_members (area_key, therapist_id, missed)
         SELECT $1, id, 0 FROM unnest($2::uuid[]) AS id
         ON CONFLICT (area_key, therapist_id) DO UPDATE SET missed = 0",
    )
    .bind(area_key)
    .bind(seen)
    .execute(&mut *db)
    .await?;
    sqlx::query(
        "UPDATE scraper.area_members SET missed = missed + 1
          WHERE area_key = $1 AND NOT (therapist_id = ANY($2))",
    )
    .bind(area_key)
    .bind(seen)
    .execute(&mut *db)
    .await?;
    let gone: Vec<Uuid> = sqlx::query_scalar(
        "DELETE FROM scraper.area_members WHERE area_key = $1 AND missed >= $2
         RETURNING therapist_id",
    )
    .bind(area_key)
    .bind(remove_after)
    .fetch_all(&mut *db)
    .await?;
    if gone.is_empty() {
        return Ok(gone);
    }
    sqlx::query_scalar(
        "UPDATE scraper.therapists t SET removed = true
          WHERE t.therapist_id = ANY($1) AND NOT t.removed
            AND NOT EXISTS (SELECT 1 FROM scraper.area_members m WHERE m.therapist_id = t.therapist_id)
         RETURNING t.therapist_id",
    )
    .bind(&gone)
    .fetch_all(&mut *db)
    .await
}
