-- session
ALTER SESSION SET TIMEZONE = 'UTC';

-- create schema
CREATE SCHEMA IF NOT EXISTS "zeotap_sync";

-- create versions table
CREATE TABLE IF NOT EXISTS "zeotap_sync"."sync_versions" (sync_id VARCHAR(128) PRIMARY KEY, version BIGINT NOT NULL, plan_id VARCHAR(64), committed_at TIMESTAMP);

-- first version row
INSERT INTO "zeotap_sync"."sync_versions" (sync_id, version) SELECT %s, 0 WHERE NOT EXISTS (SELECT 1 FROM "zeotap_sync"."sync_versions" WHERE sync_id = %s);

-- source into scratch, with the row hash
CREATE TEMPORARY TABLE "zeotap_source" AS SELECT s.*, MD5(TO_JSON(OBJECT_CONSTRUCT_KEEP_NULL('0', s."customer_id", '1', s."email", '2', s."plan"))) AS "__row_hash" FROM (SELECT customer_id, email, plan FROM crm.customers) AS s;

-- duplicated keys
CREATE TEMPORARY TABLE "zeotap_dups" AS SELECT "customer_id", COUNT(*) AS n FROM "zeotap_source" WHERE "customer_id" IS NOT NULL GROUP BY "customer_id" HAVING COUNT(*) > 1;

-- create state table
CREATE TABLE "zeotap_sync"."state_vip_customers_ced14fac" AS SELECT s."customer_id", s."email", s."plan", s."__row_hash", CAST(NULL AS VARCHAR) AS "__identity", CAST(NULL AS VARCHAR) AS "__payload_hash", CAST(NULL AS VARCHAR) AS "__payload_fields" FROM "zeotap_source" AS s WHERE 1 = 0;

-- state table columns
SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position;

-- counts
SELECT COUNT(*), COALESCE(SUM(CASE WHEN "customer_id" IS NULL THEN 1 ELSE 0 END), 0) FROM "zeotap_source";

-- added
SELECT s."customer_id", s."email", s."plan", CAST(NULL AS VARCHAR) AS "__identity", CAST(NULL AS VARCHAR) AS "__payload_hash", CAST(NULL AS VARCHAR) AS "__payload_fields", s."__row_hash", 'added' AS "__change" FROM "zeotap_source" AS s WHERE s."customer_id" IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "zeotap_dups" AS d WHERE d."customer_id" = s."customer_id") AND NOT EXISTS (SELECT 1 FROM "zeotap_sync"."state_vip_customers_ced14fac" AS t WHERE t."customer_id" = s."customer_id");

-- changed
SELECT s."customer_id", s."email", s."plan", t."__identity" AS "__identity", t."__payload_hash" AS "__payload_hash", t."__payload_fields" AS "__payload_fields", s."__row_hash", 'changed' AS "__change" FROM "zeotap_sync"."state_vip_customers_ced14fac" AS t JOIN (SELECT s.* FROM "zeotap_source" AS s WHERE s."customer_id" IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "zeotap_dups" AS d WHERE d."customer_id" = s."customer_id")) AS s ON t."customer_id" = s."customer_id" WHERE s."__row_hash" <> t."__row_hash";

-- removed
SELECT t."customer_id", t."email", t."plan", t."__identity" AS "__identity", t."__payload_hash" AS "__payload_hash", t."__payload_fields" AS "__payload_fields", t."__row_hash", 'removed' AS "__change" FROM "zeotap_sync"."state_vip_customers_ced14fac" AS t WHERE NOT EXISTS (SELECT 1 FROM "zeotap_source" AS s WHERE s."customer_id" = t."customer_id");

-- refresh (full_refresh)
SELECT s."customer_id", s."email", s."plan", t."__identity" AS "__identity", t."__payload_hash" AS "__payload_hash", t."__payload_fields" AS "__payload_fields", s."__row_hash", 'refresh' AS "__change" FROM "zeotap_sync"."state_vip_customers_ced14fac" AS t JOIN (SELECT s.* FROM "zeotap_source" AS s WHERE s."customer_id" IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "zeotap_dups" AS d WHERE d."customer_id" = s."customer_id")) AS s ON t."customer_id" = s."customer_id" WHERE s."__row_hash" = t."__row_hash";

-- invalid rows
SELECT s."customer_id", s."email", s."plan", CASE WHEN s."customer_id" IS NULL THEN %s ELSE %s || CAST(d.n AS VARCHAR) || %s END AS "__reason" FROM "zeotap_source" AS s LEFT JOIN "zeotap_dups" AS d ON d."customer_id" = s."customer_id" WHERE s."customer_id" IS NULL OR d.n IS NOT NULL;

-- commit: version compare-and-set
UPDATE "zeotap_sync"."sync_versions" SET version = %s, plan_id = %s, committed_at = CURRENT_TIMESTAMP WHERE sync_id = %s AND (version = %s OR (plan_id = %s AND version = %s));

-- commit: read version
SELECT version, plan_id FROM "zeotap_sync"."sync_versions" WHERE sync_id = %s;

-- commit: acknowledged rows table
CREATE TEMPORARY TABLE "zeotap_acknowledged" AS SELECT t.*, CAST(NULL AS VARCHAR) AS "__change" FROM "zeotap_sync"."state_vip_customers_ced14fac" AS t WHERE 1 = 0;

-- commit: load acknowledged rows
INSERT INTO "zeotap_acknowledged" ("customer_id", "email", "plan", "__row_hash", "__identity", "__payload_hash", "__payload_fields", "__change") VALUES (%s, %s, %s, %s, %s, %s, %s, %s);

-- commit: merge
MERGE INTO "zeotap_sync"."state_vip_customers_ced14fac" AS t USING "zeotap_acknowledged" AS a ON t."customer_id" = a."customer_id" WHEN MATCHED AND a."__change" = 'removed' THEN DELETE WHEN MATCHED THEN UPDATE SET "email" = a."email", "plan" = a."plan", "__row_hash" = a."__row_hash", "__identity" = a."__identity", "__payload_hash" = a."__payload_hash", "__payload_fields" = a."__payload_fields" WHEN NOT MATCHED AND a."__change" <> 'removed' THEN INSERT ("customer_id", "email", "plan", "__row_hash", "__identity", "__payload_hash", "__payload_fields") VALUES (a."customer_id", a."email", a."plan", a."__row_hash", a."__identity", a."__payload_hash", a."__payload_fields");

-- commit: merge on a rebind
DELETE FROM "zeotap_sync"."state_vip_customers_ced14fac" WHERE 1 = 1
MERGE INTO "zeotap_sync"."state_vip_customers_ced14fac" AS t USING "zeotap_acknowledged" AS a ON t."customer_id" = a."customer_id" WHEN MATCHED AND a."__change" = 'removed' THEN DELETE WHEN MATCHED THEN UPDATE SET "email" = a."email", "plan" = a."plan", "__row_hash" = a."__row_hash", "__identity" = a."__identity", "__payload_hash" = a."__payload_hash", "__payload_fields" = a."__payload_fields" WHEN NOT MATCHED AND a."__change" <> 'removed' THEN INSERT ("customer_id", "email", "plan", "__row_hash", "__identity", "__payload_hash", "__payload_fields") VALUES (a."customer_id", a."email", a."plan", a."__row_hash", a."__identity", a."__payload_hash", a."__payload_fields");

-- commit: drop scratch
DROP TABLE IF EXISTS "zeotap_acknowledged";

-- identity lookup
SELECT t."customer_id", t."__identity" FROM "zeotap_sync"."state_vip_customers_ced14fac" AS t WHERE t."__identity" IN (SELECT lookup_identity FROM "zeotap_lookup");

