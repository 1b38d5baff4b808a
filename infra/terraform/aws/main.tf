# Stowage's AWS backend (STOWAGE_BACKEND=aws): one S3 bucket, one DynamoDB table per logical
# table, one SQS queue per logical queue with its "-poison" dead-letter queue, a write-once
# (Object Lock) bucket anchoring the audit log, and an IAM policy that grants exactly what the
# aws backend does on exactly these resources.
#
# Names are those of shared/names.py: tests/test_infra.py fails when they disagree.
# What runs the queue workers with this backend: see docs/deploy.md.

locals {
  # ---- names (shared/names.py) ----
  # Containers are key prefixes ("<container>/<key>") inside the one bucket.
  containers = [
    "stowage-data",
    "stowage-backups",
  ]
  backup_container = "stowage-backups"
  data_container   = "stowage-data"
  tables = [
    "stowageapikeys",
    "stowageobjects",
    "stowagecommands",
    "stowagememory",
    "stowagesessions",
    "stowageworkflows",
    "stowagecheckpoints",
    "stowagechanges",
    "stowageaudit",
  ]
  # Work queues; each gets "<name>-poison" as its dead-letter queue below.
  queues = [
    "stowage-commands",
  ]

  # The audit anchor bucket's one key prefix (shared/stores.py ANCHOR_BUCKET_CONTAINER).
  anchor_container = "stowage-anchor"

  # Same as the Functions host's maxDequeueCount (host.json): the 5th failed receive goes to -poison.
  max_receive_count = 5
  # Set explicitly: newer queues default to 1 MiB, older tools and queues to 256 KiB.
  max_message_size = 262144
}

# ---- S3 ----------------------------------------------------------------------------------

resource "aws_s3_bucket" "data" {
  #checkov:skip=CKV_AWS_18:Server access logs need a second log bucket; audit S3 data access with CloudTrail data events if required (account-level, out of scope).
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice left to the operator; versioning and lifecycle are on.
  #checkov:skip=CKV2_AWS_62:The app does not consume S3 event notifications.
  bucket = var.bucket_name
}

resource "aws_s3_bucket_ownership_controls" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket                  = aws_s3_bucket.data.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "data" {
  bucket = aws_s3_bucket.data.id

  versioning_configuration {
    status = "Enabled"
  }
}

# SSE-KMS with the AWS-managed aws/s3 key: no key policy or extra IAM actions to manage.
resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    id     = "backups-ia-then-expire"
    status = "Enabled"

    filter {
      prefix = "${local.backup_container}/"
    }

    transition {
      days          = var.backup_cool_after_days
      storage_class = "STANDARD_IA"
    }

    expiration {
      days = var.backup_retention_days
    }

    noncurrent_version_expiration {
      noncurrent_days = var.backup_retention_days
    }
  }

  rule {
    id     = "data-expire-old-versions"
    status = "Enabled"

    filter {
      prefix = "${local.data_container}/"
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_retention_days
    }
  }

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    # Every object: an empty prefix (accepted by provider 5.x and 6.x alike).
    filter {
      prefix = ""
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.data]
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.data.arn,
      "${aws_s3_bucket.data.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "data" {
  bucket     = aws_s3_bucket.data.id
  policy     = data.aws_iam_policy_document.bucket.json
  depends_on = [aws_s3_bucket_public_access_block.data]
}

# ---- S3: the audit log's anchor (STOWAGE_AUDIT_ANCHOR=s3://<bucket>) -----------------------
# Every signed audit checkpoint is also written here, create-only, so that rewriting the data
# bucket is detectable (shared/storage/tlog.py, Anchoring). Object Lock in COMPLIANCE mode with a
# default retention: every object version is locked for audit_anchor_retention_days from its
# write, against everyone including the account root, and the app needs no retention action.
# The bucket policy also refuses any write that is not create-only, and every delete.

resource "aws_s3_bucket" "audit_anchor" {
  #checkov:skip=CKV_AWS_18:Server access logs need a second log bucket; audit S3 data access with CloudTrail data events if required (account-level, out of scope).
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice left to the operator; the anchor is locked in place.
  #checkov:skip=CKV2_AWS_62:The app does not consume S3 event notifications.
  bucket              = var.audit_anchor_bucket_name
  object_lock_enabled = true
}

resource "aws_s3_bucket_ownership_controls" "audit_anchor" {
  bucket = aws_s3_bucket.audit_anchor.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "audit_anchor" {
  bucket                  = aws_s3_bucket.audit_anchor.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# Object Lock requires versioning; it cannot be suspended afterwards.
resource "aws_s3_bucket_versioning" "audit_anchor" {
  bucket = aws_s3_bucket.audit_anchor.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_object_lock_configuration" "audit_anchor" {
  bucket = aws_s3_bucket.audit_anchor.id

  rule {
    default_retention {
      mode = "COMPLIANCE"
      days = var.audit_anchor_retention_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.audit_anchor]
}

resource "aws_s3_bucket_server_side_encryption_configuration" "audit_anchor" {
  bucket = aws_s3_bucket.audit_anchor.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
    bucket_key_enabled = true
  }
}

# Nothing expires: a version is deletable only after its retention, and only by an operator.
resource "aws_s3_bucket_lifecycle_configuration" "audit_anchor" {
  bucket = aws_s3_bucket.audit_anchor.id

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {
      prefix = ""
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  depends_on = [aws_s3_bucket_versioning.audit_anchor]
}

data "aws_iam_policy_document" "audit_anchor_bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.audit_anchor.arn,
      "${aws_s3_bucket.audit_anchor.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  # Create-only for everyone: a PutObject without If-None-Match could add a version over a
  # locked note (the locked one stays, and the app reports the key as rewritten).
  statement {
    sid       = "DenyWritesThatAreNotCreateOnly"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.audit_anchor.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Null"
      variable = "s3:if-none-match"
      values   = ["true"]
    }
  }
}

resource "aws_s3_bucket_policy" "audit_anchor" {
  bucket     = aws_s3_bucket.audit_anchor.id
  policy     = data.aws_iam_policy_document.audit_anchor_bucket.json
  depends_on = [aws_s3_bucket_public_access_block.audit_anchor]
}

# ---- DynamoDB ----------------------------------------------------------------------------

resource "aws_dynamodb_table" "app" {
  #checkov:skip=CKV_AWS_119:Customer-managed KMS keys are left to the user's key policy; tables are encrypted at rest with the AWS-managed key.
  for_each                    = toset(local.tables)
  name                        = "${var.table_prefix}${each.value}"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  range_key                   = "rk"
  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "rk"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  # TTL on expires_at, the attribute objects with a TTL carry. The app writes it as an ISO-8601
  # string today, which DynamoDB TTL ignores (it acts on Number epoch seconds only): expiry is the
  # app's own purge timer; TTL becomes a backstop only if the attribute is ever written as a Number.
  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  server_side_encryption {
    enabled = true
  }
}

# ---- SQS ---------------------------------------------------------------------------------

resource "aws_sqs_queue" "poison" {
  for_each                  = toset(local.queues)
  name                      = "${var.queue_prefix}${each.value}-poison"
  max_message_size          = local.max_message_size
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "app" {
  for_each                   = toset(local.queues)
  name                       = "${var.queue_prefix}${each.value}"
  max_message_size           = local.max_message_size
  message_retention_seconds  = var.queue_message_retention_seconds
  visibility_timeout_seconds = var.queue_visibility_timeout_seconds
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.poison[each.key].arn
    maxReceiveCount     = local.max_receive_count
  })
}

resource "aws_sqs_queue_redrive_allow_policy" "poison" {
  for_each  = toset(local.queues)
  queue_url = aws_sqs_queue.poison[each.key].id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.app[each.key].arn]
  })
}

# ---- IAM: exactly the aws backend's actions on exactly these resources ------------------

data "aws_iam_policy_document" "app" {
  statement {
    sid       = "ListBucket"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]
  }

  statement {
    sid = "ContainerObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
    ]
    resources = [for c in local.containers : "${aws_s3_bucket.data.arn}/${c}/*"]
  }

  # The audit anchor (AwsObjectLockBackend): check its Object Lock, list versions (a key written
  # over, or hidden by a delete marker, is reported), read and create notes. No delete.
  statement {
    sid = "AuditAnchorBucket"
    actions = [
      "s3:GetBucketObjectLockConfiguration",
      "s3:ListBucketVersions",
    ]
    resources = [aws_s3_bucket.audit_anchor.arn]
  }

  statement {
    sid = "AuditAnchorObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
    ]
    resources = ["${aws_s3_bucket.audit_anchor.arn}/${local.anchor_container}/*"]
  }

  # What shared/backends/aws.py calls (tests/test_infra.py derives this list from its boto3 calls).
  # TransactWriteItems has no IAM action of its own: each item needs its per-item action (the
  # backend's transactions hold Put and Delete items).
  statement {
    sid = "Tables"
    actions = [
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:DeleteItem",
      "dynamodb:Query",
      "dynamodb:Scan",
      "dynamodb:DescribeTable",
    ]
    resources = [for t in aws_dynamodb_table.app : t.arn]
  }

  # Work queues and their -poison queues (the local host moves a message there itself, and
  # operators read it back).
  statement {
    sid = "Queues"
    actions = [
      "sqs:SendMessage",
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
      "sqs:GetQueueUrl",
    ]
    resources = concat(
      [for q in aws_sqs_queue.app : q.arn],
      [for q in aws_sqs_queue.poison : q.arn],
    )
  }

  # The backend's ping() (anonymous GET /api/health) lists tables and queues. These two list
  # actions cannot be scoped to resources; they reveal names only, no data.
  statement {
    sid = "HealthPing"
    actions = [
      "dynamodb:ListTables",
      "sqs:ListQueues",
    ]
    resources = ["*"]
  }
}

resource "aws_iam_policy" "app" {
  name        = "${var.table_prefix}app"
  description = "Stowage aws backend: data access to its bucket, tables and queues only."
  policy      = data.aws_iam_policy_document.app.json
}

resource "aws_iam_role_policy_attachment" "app" {
  for_each   = toset(var.attach_to_role_names)
  role       = each.value
  policy_arn = aws_iam_policy.app.arn
}

resource "aws_iam_group_policy_attachment" "app" {
  for_each   = toset(var.attach_to_group_names)
  group      = each.value
  policy_arn = aws_iam_policy.app.arn
}
