-- The query surface finds a patient's inquiries through this index
-- (`patient_ids @> ARRAY[$1]`). With GIN's fast update, every inquiry
-- written goes to a pending list that each lookup scans in full until a
-- vacuum merges it: 1.4 ms per lookup after 30,000 inquiries, against
-- 0.05 ms merged (docs/benchmarks.md, Queries). Inquiries are written in
-- batches of a few per search, so updating the index directly costs the
-- writes little; the pending list is merged once here.
ALTER INDEX matcher.inquiries_patient_ids SET (fastupdate = off);
SELECT gin_clean_pending_list('matcher.inquiries_patient_ids'::regclass);
