-- sync_logical_slot: objects are added by later versions' functions and views.
COMMENT ON EXTENSION sync_logical_slot IS
  'keeps the primary''s logical replication slots failover-ready on physical standbys';
