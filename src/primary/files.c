/*
 * Files of the primary that the standbys' workers need, served without
 * pg_read_binary_file (which lets its grantee read every file of the data
 * directory, every table among them): only a decoding snapshot file, named
 * by its LSN, and only a logical slot's state file, named by the slot.
 * Each is REVOKEd from PUBLIC and granted to the workers' role (README).
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xlogdefs.h"
#include "fmgr.h"
#include "replication/slot.h"
#include "storage/fd.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"

/*
 * Called through the fmgr entry points that src/api.rs exports (a Rust
 * cdylib exports only Rust symbols): plain forwarders, nothing of Rust's on
 * the error path.
 */
Datum		sls_read_snapshot(PG_FUNCTION_ARGS);
Datum		sls_read_slot_state(PG_FUNCTION_ARGS);

/* The whole file at path, or NULL when it does not exist. */
static bytea *
read_whole_file(const char *path)
{
	int			fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	struct stat st;
	bytea	   *result;
	Size		done = 0;

	if (fd < 0)
	{
		if (errno == ENOENT)
			return NULL;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", path)));
	}
	if (fstat(fd, &st) < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat file \"%s\": %m", path)));
	if (st.st_size > MaxAllocSize - VARHDRSZ)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("file \"%s\" is too large", path)));
	result = (bytea *) palloc(VARHDRSZ + st.st_size);
	while (done < (Size) st.st_size)
	{
		ssize_t		n = read(fd, VARDATA(result) + done, st.st_size - done);

		if (n < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", path)));
		if (n == 0)
			break;
		done += n;
	}
	CloseTransientFile(fd);
	SET_VARSIZE(result, VARHDRSZ + done);
	return result;
}

/*
 * sync_logical_slot_read_snapshot(lsn pg_lsn) RETURNS bytea: the serialized
 * decoding snapshot the primary keeps for lsn (pg_logical/snapshots), NULL
 * when there is none.
 */
Datum
sls_read_snapshot(PG_FUNCTION_ARGS)
{
	XLogRecPtr	lsn = PG_GETARG_LSN(0);
	char		path[MAXPGPATH];
	bytea	   *content;

	snprintf(path, sizeof(path), "pg_logical/snapshots/%X-%X.snap", LSN_FORMAT_ARGS(lsn));
	content = read_whole_file(path);
	if (content == NULL)
		PG_RETURN_NULL();
	PG_RETURN_BYTEA_P(content);
}

/*
 * sync_logical_slot_read_slot_state(slot_name name) RETURNS bytea: the state
 * file of a logical replication slot of this server (its persistent data, as
 * last saved), NULL when no such logical slot exists.
 */
Datum
sls_read_slot_state(PG_FUNCTION_ARGS)
{
	Name		name = PG_GETARG_NAME(0);
	char		path[MAXPGPATH];
	ReplicationSlot *slot;
	bool		logical;
	bytea	   *content;

	(void) ReplicationSlotValidateName(NameStr(*name), ERROR);
	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	slot = SearchNamedReplicationSlot(NameStr(*name), false);
	logical = slot != NULL && SlotIsLogical(slot);
	LWLockRelease(ReplicationSlotControlLock);
	if (!logical)
		PG_RETURN_NULL();
	snprintf(path, sizeof(path), "pg_replslot/%s/state", NameStr(*name));
	content = read_whole_file(path);
	if (content == NULL)
		PG_RETURN_NULL();
	PG_RETURN_BYTEA_P(content);
}
