/*
 * The hooks that sync_logical_slot installs on every server that preloads it.
 *
 * They run in every backend and every walsender, so they are written in C:
 * an ERROR raised by the code they wrap (the executor, the previous hook, the
 * socket layer) passes through here exactly as core raised it, with every
 * field (schema, table, column, datatype and constraint names, context,
 * position, location) and with no Rust frame between the raise and the
 * catch. Rust is called only for decisions that raise nothing in other
 * sessions' paths (sls_standbys_state and sls_standbys_confirmed_upto, in
 * src/primary/mod.rs), and only where the library has work to do: a
 * logical walsender's XLogData message or keepalive, or a statement that
 * calls a SQL decoding function.
 *
 * What the hooks do (docs/design.md, "The two halves" and invariant 7):
 * - ClientAuthentication_hook: in a database walsender, wraps PqCommMethods
 *   so that each XLogData message of a logical slot is held until the
 *   standbys named in sync_logical_slot.standby_slot_names have flushed the
 *   WAL it comes from, and no keepalive tells the consumer of a position
 *   past what they have flushed;
 * - ExecutorRun_hook: before a statement that calls a SQL decoding function
 *   runs, waits until the standbys have flushed all WAL there is;
 * - a SIGUSR1 wrapper in walsenders that notices the one procsignal that asks
 *   a walsender to stop (PROCSIG_WALSND_INIT_STOPPING, sent by the
 *   checkpointer at shutdown), and nothing else;
 * - on a PostgreSQL 16 standby (which can decode), the same two hooks refuse
 *   to let a consumer use a copy this extension keeps: START_REPLICATION on
 *   a copy fails before its first message, and so does a statement whose
 *   decoding function (or pg_replication_slot_advance) names a copy. A
 *   copy moved by a consumer on the standby would be ahead of the primary's
 *   consumer, whose changes would then be missing after a failover. The
 *   standby's own slots (made there by a consumer) are not affected.
 */
#define _GNU_SOURCE				/* POLLRDHUP */
#include "postgres.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "executor/executor.h"
#include "libpq/auth.h"
#include "libpq/libpq.h"
#include "libpq/libpq-be.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "nodes/nodes.h"
#include "nodes/params.h"
#include "nodes/plannodes.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "postmaster/interrupt.h"
#include "replication/slot.h"
#include "replication/syncrep.h"
#include "replication/walsender.h"
#include "replication/walsender_private.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "utils/timeout.h"
#include "storage/proc.h"
#include "storage/procsignal.h"
#include "storage/shmem.h"
#include "catalog/pg_type_d.h"
#include "utils/builtins.h"
#include "utils/fmgrtab.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#if PG_VERSION_NUM < 150000 || PG_VERSION_NUM >= 170000
#error "sync_logical_slot's hooks are written for PostgreSQL 15 and 16"
#endif

/* Answers of sls_standbys_state (src/primary/mod.rs). */
#define SLS_UNCHECKED 0			/* nothing to wait for now */
#define SLS_CONFIRMED 1			/* enough standbys have flushed the LSN */
#define SLS_WAIT 2				/* not yet */

#define SLS_WAITER_WALSENDER 0
#define SLS_WAITER_SQL 1

/* Rust: the decision, from shared memory and the settings; raises nothing. */
extern int	sls_standbys_state(uint64 lsn, int waiter);
extern uint64 sls_standbys_confirmed_upto(int waiter);
/* Rust: logs once that the stop request cannot be told apart (see below). */
extern void sls_warn_stop_detection(void);

void		sls_install_hooks(void);
bool		sls_watch_slot_conflicts(void);
bool		sls_slot_conflict_pending(void);
void		sls_slot_conflict_handled(void);
void		sls_slot_conflict_noted(void);
static void refuse_copy(const char *slot_name);

static ClientAuthentication_hook_type prev_client_auth = NULL;
static ExecutorRun_hook_type prev_executor_run = NULL;

/* ---------------------------------------------------------------- stop request */

/*
 * procsignal.c's private slot layout, the same in PostgreSQL 15 and 16. The
 * walsender's SIGUSR1 handler reads and clears the flags, so the one flag
 * that means "stop" can only be seen just before that handler runs. The
 * layout is checked once per walsender (the slot must carry our pid);
 * pss_barrierCV and the fields after the flags are never read.
 */
typedef struct
{
	volatile pid_t pss_pid;
	volatile sig_atomic_t pss_signalFlags[NUM_PROCSIGNALS];
	pg_atomic_uint64 pss_barrierGeneration;
	pg_atomic_uint32 pss_barrierCheckMask;
	ConditionVariable pss_barrierCV;
} SlsProcSignalSlot;

typedef struct
{
	pg_atomic_uint64 psh_barrierGeneration;
	SlsProcSignalSlot psh_slot[FLEXIBLE_ARRAY_MEMBER];
} SlsProcSignalHeader;

/*
 * This process's procsignal slot and the SIGUSR1 handler our wrapper wraps:
 * a walsender's (sls_sigusr1) or the sync worker's (sls_worker_sigusr1); a
 * process is only ever one of the two.
 */
static volatile SlsProcSignalSlot *my_procsignal_slot = NULL;
static pqsigfunc prev_sigusr1 = NULL;
static bool watching_sigusr1 = false;
/* Set by the SIGUSR1 wrapper; never cleared: a stop request is final. */
static volatile sig_atomic_t stop_requested = false;
/* The slot layout could not be verified: any SIGUSR1 counts as a stop. */
static bool stop_detection_blind = false;

/*
 * This process's procsignal slot, checked to carry our pid; NULL when the
 * layout is not the expected one. Once its procsignal slot is set up (a
 * walsender, or the sync worker connected to its database).
 */
static volatile SlsProcSignalSlot *
find_my_procsignal_slot(void)
{
	bool		found;
	SlsProcSignalHeader *header;

	header = (SlsProcSignalHeader *) ShmemInitStruct("ProcSignal", ProcSignalShmemSize(), &found);
	if (found && MyBackendId >= 1 && MyBackendId <= MaxBackends + NUM_AUXPROCTYPES &&
		header->psh_slot[MyBackendId - 1].pss_pid == MyProcPid)
		return &header->psh_slot[MyBackendId - 1];
	return NULL;
}

/*
 * Makes `wrapper` this process's SIGUSR1 handler, with the handler it wraps
 * in prev_sigusr1; no SIGUSR1 is handled in between.
 */
static void
wrap_sigusr1(pqsigfunc wrapper)
{
	sigset_t	block,
				old;

	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigprocmask(SIG_BLOCK, &block, &old);
	prev_sigusr1 = pqsignal(SIGUSR1, wrapper);
	sigprocmask(SIG_SETMASK, &old, NULL);
}

/* From a wrapper: the handler it wraps (core's procsignal handler). */
static void
call_prev_sigusr1(int postgres_signal_arg)
{
	if (prev_sigusr1 != NULL && prev_sigusr1 != (pqsigfunc) SIG_IGN &&
		prev_sigusr1 != (pqsigfunc) SIG_DFL)
		prev_sigusr1(postgres_signal_arg);
}

static void
sls_sigusr1(SIGNAL_ARGS)
{
	int			save_errno = errno;

	if (my_procsignal_slot == NULL ||
		my_procsignal_slot->pss_signalFlags[PROCSIG_WALSND_INIT_STOPPING])
		stop_requested = true;
	errno = save_errno;
	call_prev_sigusr1(postgres_signal_arg);
}

/*
 * Finds this walsender's procsignal slot and wraps its SIGUSR1 handler.
 * Called from the first message the walsender sends (its first
 * ReadyForQuery), after the walsender installed its own handlers and before
 * it runs any replication command.
 */
static void
watch_sigusr1(void)
{
	if (watching_sigusr1)
		return;
	watching_sigusr1 = true;

	my_procsignal_slot = find_my_procsignal_slot();
	if (my_procsignal_slot == NULL)
	{
		stop_detection_blind = true;
		sls_warn_stop_detection();
	}
	wrap_sigusr1(sls_sigusr1);
}

/* ---------------------------------------------------------------- waiting */

/* The methods of this walsender before we wrapped them. */
static const PQcommMethods *original_methods = NULL;

/*
 * The furthest position a keepalive may tell a logical consumer: walEnd, or
 * what the named standbys have flushed if that is less. A consumer may
 * confirm a keepalive's position (pg_recvlogical does), and WAL with nothing
 * for it (another database's writes, records its plugin skips) is decoded,
 * unheld, past the standbys' flush: confirmed there, after a failover it
 * would skip the new primary's first transactions below that position.
 */
/*
 * A clamped keepalive told the consumer less than the walsender read; the
 * standbys' flush does not wake a logical walsender, which would tell the
 * rest only when new WAL comes (a consumer waiting for a position, such as
 * pg_recvlogical --endpos, would wait that long). So while clamped, the
 * walsender's latch is set every 100 ms: caught up and waiting for WAL, it
 * then sends its next keepalive, clamped again until the standbys have it.
 */
static TimeoutId keepalive_retry_timeout = MAX_TIMEOUTS;

static void
keepalive_retry(void)
{
	SetLatch(MyLatch);
}

static void
retry_keepalive_soon(void)
{
	if (keepalive_retry_timeout == MAX_TIMEOUTS)
		keepalive_retry_timeout = RegisterTimeout(USER_TIMEOUT, keepalive_retry);
	if (!get_timeout_active(keepalive_retry_timeout))
		enable_timeout_after(keepalive_retry_timeout, 100);
}

/*
 * The furthest record boundary a keepalive told this consumer that the
 * standbys had flushed. The standbys' flush itself may fall inside a record
 * (WAL is streamed in pages): the promoted standby's timeline would begin at
 * the end of the last whole record, before it, and a consumer confirming the
 * flush would skip the new timeline's first transactions up to there. So a
 * clamped keepalive tells this boundary instead (or the slot's own
 * confirmed position, if further): a walEnd is always one (the end of the
 * last record decoded).
 */
static XLogRecPtr last_boundary_told = InvalidXLogRecPtr;

static XLogRecPtr
keepalive_position(XLogRecPtr walEnd)
{
	uint64		upto = sls_standbys_confirmed_upto(SLS_WAITER_WALSENDER);
	XLogRecPtr	floor = last_boundary_told;

	if ((uint64) walEnd <= upto)
	{
		if (walEnd > last_boundary_told)
			last_boundary_told = walEnd;
		return walEnd;
	}
	if (MyReplicationSlot != NULL)
	{
		XLogRecPtr	confirmed;

		SpinLockAcquire(&MyReplicationSlot->mutex);
		confirmed = MyReplicationSlot->data.confirmed_flush;
		SpinLockRelease(&MyReplicationSlot->mutex);
		floor = Max(floor, confirmed);
	}
	return Min((uint64) floor, upto);
}

/*
 * While held, the walsender's own loop sends no keepalives: send one a second
 * (walEnd = the end of the last record fully decoded, as far as the
 * standbys have it), so that the client's wal_receiver_timeout does not end
 * a connection that is only waiting.
 */
static void
send_keepalive(void)
{
	char		msg[1 + 8 + 8 + 1];
	uint64		n;

	if (original_methods == NULL || MyWalSnd == NULL)
		return;
	msg[0] = 'k';
	n = pg_hton64((uint64) keepalive_position(MyWalSnd->sentPtr));
	memcpy(&msg[1], &n, 8);
	n = pg_hton64((uint64) GetCurrentTimestamp());
	memcpy(&msg[9], &n, 8);
	msg[17] = 0;
	original_methods->putmessage_noblock('d', msg, sizeof(msg));
	original_methods->flush_if_writable();
}

/*
 * A held walsender does not read from its client: notice when the client has
 * gone (the peer closed: POLLRDHUP, even with unread status messages queued),
 * so that the slot is freed for the consumer's next connection.
 */
static void
exit_if_client_gone(void)
{
	struct pollfd fd;

	if (MyProcPort == NULL || MyProcPort->sock == PGINVALID_SOCKET)
		return;
	fd.fd = MyProcPort->sock;
	fd.events = POLLRDHUP;
	fd.revents = 0;
	if (poll(&fd, 1, 0) > 0 && (fd.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0)
		ereport(FATAL,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("client went away while its walsender waited for the standbys (sync_logical_slot.standby_slot_names)")));
}

/*
 * At shutdown the checkpointer asks walsenders to stop and waits for them,
 * without a timeout, before its shutdown checkpoint. A held walsender cannot
 * get there, so it ends instead, having sent nothing the standbys lack.
 */
static void
exit_if_asked_to_stop(void)
{
	if (stop_requested)
		ereport(FATAL,
				(errcode(ERRCODE_ADMIN_SHUTDOWN),
				 errmsg("walsender stops while it waits for the standbys (sync_logical_slot.standby_slot_names)"),
				 errdetail("The server is shutting down; this walsender has sent nothing the standbys lack.")));
}

/*
 * Waits until enough of the named standbys have flushed lsn. Returns true
 * when they have, false when nothing was checked (no standby named, this
 * server in recovery, a walsender of a named slot). Honours interrupts
 * (cancel, terminate, barriers), reloads the configuration when asked, and
 * in a walsender notices its client leaving and a shutdown.
 */
static bool
wait_for_standbys(XLogRecPtr lsn, int waiter)
{
	long		delay_us = 200;
	TimestampTz last_keepalive = GetCurrentTimestamp();

	for (;;)
	{
		int			state = sls_standbys_state((uint64) lsn, waiter);

		if (state != SLS_WAIT)
			return state == SLS_CONFIRMED;

		if (waiter == SLS_WAITER_WALSENDER)
		{
			TimestampTz now;

			exit_if_client_gone();
			exit_if_asked_to_stop();
			now = GetCurrentTimestamp();
			if (TimestampDifferenceExceeds(last_keepalive, now, 1000))
			{
				send_keepalive();
				last_keepalive = now;
			}
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(delay_us / 1000, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		delay_us = Min(delay_us * 2, 10000);

		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			/* As the walsender's own loops do: a changed setting may release us. */
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (am_walsender)
				SyncRepInitConfig();
		}
	}
}

/* ---------------------------------------------------------------- walsenders */

/*
 * The end of the WAL record that starts at (or, past a page header, just
 * after) start, read from its segment file: the walsender decodes it now, so
 * its segment is on disk and kept by the slot. InvalidXLogRecPtr when it
 * cannot be told (the segment is under another timeline's name, the page is
 * not the one expected): the caller then waits for everything flushed.
 */
static int	segment_fd = -1;
static XLogSegNo segment_no = 0;
static TimeLineID segment_tli = 0;

static bool
read_wal(XLogRecPtr at, void *buf, Size len)
{
	XLogSegNo	segno;
	TimeLineID	tli = GetWALInsertionTimeLine();

	XLByteToSeg(at, segno, wal_segment_size);
	if (segment_fd < 0 || segno != segment_no || tli != segment_tli)
	{
		char		path[MAXPGPATH];
		char		fname[MAXFNAMELEN];

		if (segment_fd >= 0)
			close(segment_fd);
		XLogFileName(fname, tli, segno, wal_segment_size);
		snprintf(path, sizeof(path), XLOGDIR "/%s", fname);
		segment_fd = open(path, O_RDONLY | PG_BINARY, 0);
		segment_no = segno;
		segment_tli = tli;
		if (segment_fd < 0)
			return false;
	}
	return pg_pread(segment_fd, buf, len, XLogSegmentOffset(at, wal_segment_size)) == (ssize_t) len;
}

static XLogRecPtr
record_end(XLogRecPtr start)
{
	XLogRecPtr	pos = start;
	XLogRecPtr	page = start - start % XLOG_BLCKSZ;
	XLogPageHeaderData header;
	uint32		total;
	uint32		left;

	if (pos % XLOG_BLCKSZ == 0)
		pos += XLogSegmentOffset(pos, wal_segment_size) == 0 ? SizeOfXLogLongPHD : SizeOfXLogShortPHD;
	/* The page must be this position's, and start must not be inside a record's continuation. */
	if (!read_wal(page, &header, sizeof(header)) ||
		header.xlp_magic != XLOG_PAGE_MAGIC || header.xlp_pageaddr != page ||
		((header.xlp_info & XLP_FIRST_IS_CONTRECORD) &&
		 pos < page + XLogPageHeaderSize(&header) + MAXALIGN(header.xlp_rem_len)))
		return InvalidXLogRecPtr;
	/* A record starts MAXALIGNed, so its first field, xl_tot_len, is on this page. */
	if (!read_wal(pos, &total, sizeof(total)) || total < SizeOfXLogRecord)
		return InvalidXLogRecPtr;
	/* As the WAL reader computes EndRecPtr: page headers in between, last part MAXALIGNed. */
	left = total;
	for (;;)
	{
		uint32		room = XLOG_BLCKSZ - pos % XLOG_BLCKSZ;

		if (left <= room)
			return pos + MAXALIGN(left);
		left -= room;
		pos += room;
		pos += XLogSegmentOffset(pos, wal_segment_size) == 0 ? SizeOfXLogLongPHD : SizeOfXLogShortPHD;
	}
}

/*
 * What this walsender last proved: the standbys have flushed the whole record
 * that starts at covered_start (MyWalSnd->sentPtr while it is decoded).
 */
static XLogRecPtr covered_start = InvalidXLogRecPtr;

/*
 * Holds an XLogData message until the standbys have the WAL it comes from. A
 * message's own LSN is not enough: a transaction's BEGIN and changes carry
 * earlier positions than its COMMIT, and a consumer such as pg_recvlogical
 * writes them out as they come. Every message sent while the walsender
 * decodes one record comes from WAL up to that record's end; the record
 * starts at MyWalSnd->sentPtr (the end of the last record it finished), so
 * its first message waits for the record's end, and the record's other
 * messages pass. A record the standbys already have passes at once: under
 * load the walsender streams behind the standbys' flush, one round trip
 * late, without waiting per transaction.
 */
/*
 * Whether a logical slot streams now: the same connection also runs SQL and
 * COPY (a table sync's rows are 'd' messages too, and one that starts with
 * 'w' or 'k' is not XLogData or a keepalive).
 */
static bool
streaming_logical(void)
{
	return MyWalSnd != NULL && MyReplicationSlot != NULL &&
		SlotIsLogical(MyReplicationSlot) &&
		(MyWalSnd->state == WALSNDSTATE_CATCHUP ||
		 MyWalSnd->state == WALSNDSTATE_STREAMING ||
		 MyWalSnd->state == WALSNDSTATE_STOPPING);
}

static void
hold_xlogdata(XLogRecPtr lsn)
{
	XLogRecPtr	start;
	XLogRecPtr	target;

	if (!streaming_logical())
		return;

	start = MyWalSnd->sentPtr;
	if (start == covered_start)
		return;
	/* Nothing to wait for (no standby named, or this walsender's own slot): no WAL read. */
	if (sls_standbys_state((uint64) InvalidXLogRecPtr, SLS_WAITER_WALSENDER) == SLS_UNCHECKED)
		return;

	/*
	 * MyWalSnd->sentPtr is where the walsender reads its next record (at
	 * START_REPLICATION, the slot's restart_lsn, where decoding begins). If the
	 * record's end cannot be told, wait for all WAL flushed, which holds it.
	 */
	target = record_end(start);
	if (target == InvalidXLogRecPtr || target < lsn || target > GetFlushRecPtr(NULL))
		target = Max(lsn, GetFlushRecPtr(NULL));
	if (wait_for_standbys(target, SLS_WAITER_WALSENDER))
		covered_start = start;
}

static void
xlogdata_message(char msgtype, const char *s, size_t len)
{
	/* CopyBothResponse: START_REPLICATION is about to stream. */
	if (msgtype == 'W' && MyReplicationSlot != NULL && RecoveryInProgress())
		refuse_copy(NameStr(MyReplicationSlot->data.name));
	if (!watching_sigusr1)
		watch_sigusr1();
	if (msgtype == 'd' && len >= 1 + 8 && s[0] == 'w')
	{
		uint64		lsn;

		memcpy(&lsn, &s[1], sizeof(lsn));
		hold_xlogdata((XLogRecPtr) pg_ntoh64(lsn));
	}
}

static void
sls_comm_reset(void)
{
	original_methods->comm_reset();
}

static int
sls_flush(void)
{
	return original_methods->flush();
}

static int
sls_flush_if_writable(void)
{
	return original_methods->flush_if_writable();
}

static bool
sls_is_send_pending(void)
{
	return original_methods->is_send_pending();
}

/*
 * A logical walsender's keepalive ('k', walEnd, sendTime, replyRequested):
 * the same message with walEnd no further than the standbys have flushed
 * (keepalive_position), written to buf; otherwise the message as it is.
 */
static const char *
keepalive_clamped(char msgtype, const char *s, size_t len, char *buf)
{
	uint64		n;
	XLogRecPtr	walEnd;
	XLogRecPtr	upto;

	if (msgtype != 'd' || len != 1 + 8 + 8 + 1 || s[0] != 'k' || !streaming_logical())
		return s;
	memcpy(&n, &s[1], sizeof(n));
	walEnd = (XLogRecPtr) pg_ntoh64(n);
	upto = keepalive_position(walEnd);
	if (upto == walEnd)
		return s;

	/*
	 * At shutdown the walsender exits only once its consumer has confirmed
	 * everything it read, which this consumer is not told it may. The
	 * standbys usually have it within a round trip (they stream the same
	 * WAL): wait for them a few seconds, then send the keepalive whole. If
	 * they still lack it (a standby away), the walsender ends rather than
	 * hold the shutdown for ever, having sent nothing the standbys lack.
	 * Not when a stop cannot be told from other signals (the blind mode of
	 * watch_sigusr1): then the keepalive goes clamped, as while streaming.
	 */
	if ((stop_requested && !stop_detection_blind) || MyWalSnd->state == WALSNDSTATE_STOPPING)
	{
		TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 5000);

		while (upto < walEnd && GetCurrentTimestamp() < deadline)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 10, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			upto = keepalive_position(walEnd);
		}
		if (upto == walEnd)
			return s;
		ereport(FATAL,
				(errcode(ERRCODE_ADMIN_SHUTDOWN),
				 errmsg("walsender stops before its consumer has confirmed all it read: the standbys named in sync_logical_slot.standby_slot_names have not confirmed that WAL"),
				 errdetail("The server is shutting down and the standbys lack WAL up to %X/%X (or the setting names slots that cannot confirm); this walsender has sent nothing they lack, and the consumer resumes from what it confirmed.",
						   LSN_FORMAT_ARGS(walEnd))));
	}
	retry_keepalive_soon();
	memcpy(buf, s, len);
	n = pg_hton64((uint64) upto);
	memcpy(&buf[1], &n, sizeof(n));
	return buf;
}

static int
sls_putmessage(char msgtype, const char *s, size_t len)
{
	char		buf[1 + 8 + 8 + 1];

	xlogdata_message(msgtype, s, len);
	return original_methods->putmessage(msgtype, keepalive_clamped(msgtype, s, len, buf), len);
}

static void
sls_putmessage_noblock(char msgtype, const char *s, size_t len)
{
	char		buf[1 + 8 + 8 + 1];

	xlogdata_message(msgtype, s, len);
	original_methods->putmessage_noblock(msgtype, keepalive_clamped(msgtype, s, len, buf), len);
}

static const PQcommMethods sls_methods = {
	sls_comm_reset,
	sls_flush,
	sls_flush_if_writable,
	sls_is_send_pending,
	sls_putmessage,
	sls_putmessage_noblock
};

static void
sls_client_authentication(Port *port, int status)
{
	if (prev_client_auth)
		prev_client_auth(port, status);
	if (status == STATUS_OK && am_db_walsender && original_methods == NULL)
	{
		original_methods = PqCommMethods;
		PqCommMethods = &sls_methods;
	}
}

/* ---------------------------------------------------------------- worker: slot conflicts */

/*
 * On a 16 standby, replay that removes catalog rows a slot still needs
 * invalidates the slot; when the slot is in use, the startup process signals
 * its holder once (PROCSIG_RECOVERY_CONFLICT_LOGICALSLOT) and waits until the
 * slot is released. The worker's temporary copies stay held by the worker
 * between passes (core clears active_pid of a temporary slot only when its
 * owner exits), so the worker must notice that signal itself and drop them:
 * core turns it into no more than a cancelled statement, and replay (and a
 * promotion) would wait for ever. The worker's SIGUSR1 handler is wrapped to
 * read the flag before core's handler clears it.
 */
static volatile sig_atomic_t slot_conflict_pending = false;

static void
sls_worker_sigusr1(SIGNAL_ARGS)
{
	int			save_errno = errno;

#if PG_VERSION_NUM >= 160000
	if (my_procsignal_slot != NULL &&
		my_procsignal_slot->pss_signalFlags[PROCSIG_RECOVERY_CONFLICT_LOGICALSLOT])
	{
		slot_conflict_pending = true;
		SetLatch(MyLatch);
	}
#endif
	errno = save_errno;
	call_prev_sigusr1(postgres_signal_arg);
}

/*
 * From the sync worker, once, after it connected to its database (it then
 * has its procsignal slot). False when the slot layout could not be checked:
 * conflicts are then seen only as statements cancelled with SQLSTATE 40001
 * (sls_slot_conflict_noted, from the worker's error handling).
 */
bool
sls_watch_slot_conflicts(void)
{
	my_procsignal_slot = find_my_procsignal_slot();
	if (my_procsignal_slot == NULL)
		return false;
	wrap_sigusr1(sls_worker_sigusr1);
	return true;
}

bool
sls_slot_conflict_pending(void)
{
	return slot_conflict_pending;
}

void
sls_slot_conflict_handled(void)
{
	slot_conflict_pending = false;
}

/* A recovery conflict seen as a cancelled statement (SQLSTATE 40001). */
void
sls_slot_conflict_noted(void)
{
	slot_conflict_pending = true;
}

/* ---------------------------------------------------------------- standby copies */

/*
 * The file that marks a slot as a copy this extension made
 * (pg_replslot/<name>/sync_logical_slot; OWNER_MARKER in src/slot.rs).
 */
#if PG_VERSION_NUM >= 160000
static bool
is_copy(const char *slot_name)
{
	char		path[MAXPGPATH];
	struct stat st;
	size_t		length = strnlen(slot_name, NAMEDATALEN);

	/* Only a valid slot name (core's rule) can be a copy, and makes a path. */
	if (length == 0 || length >= NAMEDATALEN)
		return false;
	for (const char *c = slot_name; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_'))
			return false;
	snprintf(path, sizeof(path), "pg_replslot/%s/sync_logical_slot", slot_name);
	return stat(path, &st) == 0;
}
#endif

/*
 * On a standby, a consumer must not use a copy (16 can decode on a standby;
 * 15 refuses any decoding there by itself, with its own message).
 */
static void
refuse_copy(const char *slot_name)
{
#if PG_VERSION_NUM >= 160000
	if (slot_name == NULL || !is_copy(slot_name))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("replication slot \"%s\" is a failover copy kept by sync_logical_slot and cannot be used on a standby",
					slot_name),
			 errdetail("Decoding from it here would move it past what the consumer of the primary's slot has confirmed, and those changes would be missing after a failover."),
			 errhint("Consume this slot on the primary server. To decode on this standby, create a logical slot of its own here.")));
#endif
}

/* The built-in functions that take a logical slot's name first. */
#define SLS_SLOT_FUNCTIONS 5
static Oid	slot_function_oids[SLS_SLOT_FUNCTIONS];

static void
look_up_slot_functions(void)
{
	static bool done = false;

	if (done)
		return;
	/* The first four are the decoding functions the primary-side wait knows. */
	slot_function_oids[0] = fmgr_internal_function("pg_logical_slot_get_changes");
	slot_function_oids[1] = fmgr_internal_function("pg_logical_slot_peek_changes");
	slot_function_oids[2] = fmgr_internal_function("pg_logical_slot_get_binary_changes");
	slot_function_oids[3] = fmgr_internal_function("pg_logical_slot_peek_binary_changes");
	slot_function_oids[4] = fmgr_internal_function("pg_replication_slot_advance");
	done = true;
}

#if PG_VERSION_NUM >= 160000
/*
 * The slot name a call passes as a constant or as a parameter (of the
 * extended protocol, PREPARE/EXECUTE, or a PL/pgSQL variable in a generic
 * plan, whose value the parameter hook gives as the executor would get it);
 * NULL when it is computed at run time, e.g. by a subquery (then the call is
 * not refused here).
 */
static const char *
constant_slot_name(Node *arg, ParamListInfo params)
{
	/*
	 * A text or varchar value passed for the name argument comes wrapped in
	 * its cast to name (a function call, a relabelling or an I/O coercion).
	 */
	for (;;)
	{
		if (arg == NULL)
			return NULL;
		if (IsA(arg, RelabelType))
			arg = (Node *) ((RelabelType *) arg)->arg;
		else if (IsA(arg, CoerceViaIO))
			arg = (Node *) ((CoerceViaIO *) arg)->arg;
		else if (IsA(arg, FuncExpr) &&
				 (((FuncExpr *) arg)->funcformat == COERCE_IMPLICIT_CAST ||
				  ((FuncExpr *) arg)->funcformat == COERCE_EXPLICIT_CAST) &&
				 list_length(((FuncExpr *) arg)->args) == 1)
			arg = (Node *) linitial(((FuncExpr *) arg)->args);
		else
			break;
	}
	if (IsA(arg, Const) && !((Const *) arg)->constisnull)
	{
		Const	   *c = (Const *) arg;

		if (c->consttype == NAMEOID)
			return NameStr(*DatumGetName(c->constvalue));
		if (c->consttype == TEXTOID || c->consttype == VARCHAROID)
			return TextDatumGetCString(c->constvalue);
	}
	if (IsA(arg, Param) && ((Param *) arg)->paramkind == PARAM_EXTERN &&
		params != NULL)
	{
		int			id = ((Param *) arg)->paramid;

		if (id > 0 && id <= params->numParams)
		{
			ParamExternData workspace;
			ParamExternData *p;

			/*
			 * As ExecEvalParamExtern fetches it, but speculatively: a
			 * parameter hook may then decline rather than evaluate (and
			 * perhaps fail on) a value the statement might never use.
			 */
			if (params->paramFetch != NULL)
				p = params->paramFetch(params, id, true, &workspace);
			else
				p = &params->params[id - 1];
			if (p == NULL || p->isnull)
				return NULL;
			if (p->ptype == NAMEOID)
				return NameStr(*DatumGetName(p->value));
			if (p->ptype == TEXTOID || p->ptype == VARCHAROID)
				return TextDatumGetCString(p->value);
		}
	}
	return NULL;
}

static bool
refuse_copies_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, FuncExpr))
	{
		FuncExpr   *f = (FuncExpr *) node;

		for (int i = 0; i < SLS_SLOT_FUNCTIONS; i++)
			if (f->funcid == slot_function_oids[i] && f->args != NIL)
				refuse_copy(constant_slot_name(linitial(f->args), (ParamListInfo) context));
	}
	return expression_tree_walker(node, refuse_copies_walker, context);
}

static void
refuse_copies_in_plan(Plan *plan, ParamListInfo params)
{
	ListCell   *lc;

	if (plan == NULL)
		return;
	check_stack_depth();
	refuse_copies_walker((Node *) plan->targetlist, params);
	refuse_copies_walker((Node *) plan->qual, params);
	switch (nodeTag(plan))
	{
		case T_FunctionScan:
			refuse_copies_walker((Node *) ((FunctionScan *) plan)->functions, params);
			break;
		case T_ValuesScan:
			refuse_copies_walker((Node *) ((ValuesScan *) plan)->values_lists, params);
			break;
		case T_Result:
			refuse_copies_walker(((Result *) plan)->resconstantqual, params);
			break;
		case T_Append:
			foreach(lc, ((Append *) plan)->appendplans)
				refuse_copies_in_plan(lfirst(lc), params);
			break;
		case T_MergeAppend:
			foreach(lc, ((MergeAppend *) plan)->mergeplans)
				refuse_copies_in_plan(lfirst(lc), params);
			break;
		case T_SubqueryScan:
			refuse_copies_in_plan(((SubqueryScan *) plan)->subplan, params);
			break;
		case T_NestLoop:
		case T_MergeJoin:
		case T_HashJoin:
			refuse_copies_walker((Node *) ((Join *) plan)->joinqual, params);
			break;
		case T_Limit:
			refuse_copies_walker(((Limit *) plan)->limitOffset, params);
			refuse_copies_walker(((Limit *) plan)->limitCount, params);
			break;
		case T_CustomScan:
			refuse_copies_walker((Node *) ((CustomScan *) plan)->custom_exprs, params);
			foreach(lc, ((CustomScan *) plan)->custom_plans)
				refuse_copies_in_plan(lfirst(lc), params);
			break;
		default:
			break;
	}
	refuse_copies_in_plan(plan->lefttree, params);
	refuse_copies_in_plan(plan->righttree, params);
}

/* A statement on a standby that would decode from, or advance, a copy. */
static void
refuse_copies_in_statement(QueryDesc *qd)
{
	ListCell   *lc;

	look_up_slot_functions();
	refuse_copies_in_plan(qd->plannedstmt->planTree, qd->params);
	foreach(lc, qd->plannedstmt->subplans)
		refuse_copies_in_plan(lfirst(lc), qd->params);
}
#endif

/* ---------------------------------------------------------------- SQL decoding */

/*
 * Whether a statement calls one of the SQL decoding functions: a cheap look
 * at its text first (the functions' names), then its plan (FuncExpr OIDs of
 * the built-in functions, which bypass fmgr_hook).
 */
static bool
names_slot_functions(QueryDesc *qd, bool with_advance)
{
	const char *text;
	const char *p;
	size_t		length;

	if (qd == NULL || qd->sourceText == NULL || qd->plannedstmt == NULL)
		return false;

	/*
	 * Only this statement's text: in a multi-statement query string every
	 * statement's QueryDesc carries the whole string.
	 */
	text = qd->sourceText;

	/*
	 * Bounded by this statement's end: a long multi-statement string is not
	 * measured again for each of its statements.
	 */
	if (qd->plannedstmt->stmt_len > 0 && qd->plannedstmt->stmt_location >= 0)
		length = strnlen(text, (size_t) qd->plannedstmt->stmt_location + qd->plannedstmt->stmt_len);
	else
		length = strlen(text);
	if (qd->plannedstmt->stmt_location > 0 && qd->plannedstmt->stmt_location < length)
	{
		text += qd->plannedstmt->stmt_location;
		length -= qd->plannedstmt->stmt_location;
	}
	if (qd->plannedstmt->stmt_len > 0 && qd->plannedstmt->stmt_len < length)
		length = qd->plannedstmt->stmt_len;
	for (p = text; p + 12 <= text + length; p++)
		if ((p + 13 <= text + length && pg_strncasecmp(p, "logical_slot_", 13) == 0) ||
			(with_advance && pg_strncasecmp(p, "slot_advance", 12) == 0))
			break;
	if (p + 12 > text + length)
		return false;
	return true;
}

static bool
uses_decoding_functions(QueryDesc *qd)
{
	char	   *plan;
	bool		found = false;

	if (!names_slot_functions(qd, false))
		return false;

	look_up_slot_functions();
	plan = nodeToString(qd->plannedstmt);
	/* The four decoding functions, not pg_replication_slot_advance. */
	for (int i = 0; i < 4 && !found; i++)
	{
		char		needle[32];

		snprintf(needle, sizeof(needle), ":funcid %u ", slot_function_oids[i]);
		found = strstr(plan, needle) != NULL;
	}
	pfree(plan);
	return found;
}

/*
 * Before the decoding function consumes anything (a cancelled wait loses
 * nothing): the function reads the end of WAL when it starts, so wait again
 * for what was flushed during the wait, until a wait ends with nothing new
 * (bounded: under a steady load the last round's WAL, milliseconds of it,
 * stays uncovered).
 */
static void
wait_before_sql_decoding(void)
{
	for (int round = 0; round < 100; round++)
	{
		XLogRecPtr	flushed = GetFlushRecPtr(NULL);

		if (!wait_for_standbys(flushed, SLS_WAITER_SQL) || GetFlushRecPtr(NULL) == flushed)
			break;
	}
}

static void
sls_executor_run(QueryDesc *qd, ScanDirection direction, uint64 count, bool execute_once)
{
	if (!RecoveryInProgress())
	{
		if (uses_decoding_functions(qd))
			wait_before_sql_decoding();
	}
#if PG_VERSION_NUM >= 160000
	else if (!qd->already_executed && names_slot_functions(qd, true))
		refuse_copies_in_statement(qd);
#endif
	if (prev_executor_run)
		prev_executor_run(qd, direction, count, execute_once);
	else
		standard_ExecutorRun(qd, direction, count, execute_once);
}

/* ---------------------------------------------------------------- install */

/* From _PG_init, in the postmaster, once. */
void
sls_install_hooks(void)
{
	prev_client_auth = ClientAuthentication_hook;
	ClientAuthentication_hook = sls_client_authentication;
	prev_executor_run = ExecutorRun_hook;
	ExecutorRun_hook = sls_executor_run;
}
