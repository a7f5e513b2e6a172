/*
 * The worker's connection to the primary, opened here rather than with
 * libpqwalreceiver's walrcv_connect.
 *
 * Why: walrcv_connect polls libpq and processes interrupts while it waits;
 * the worker cuts a waiting attempt short on a reload (new settings apply at
 * once), and that interrupt is an ERROR raised from inside walrcv_connect,
 * which then never closes its half-open connection: one socket, libpq's
 * buffers and a few hundred bytes of TopMemoryContext lost per reload
 * (tests/no_leak_on_cancel.rs measured it). Here a reload ends the attempt
 * by closing it: nothing is raised, nothing leaks. Other interrupts are
 * processed as usual; one that raises closes the attempt first.
 *
 * The connection is handed to libpqwalreceiver's other functions (exec,
 * disconnect) as its own WalReceiverConn, whose layout is private to
 * libpqwalreceiver.c and the same in PostgreSQL 15 and 16. libpq's functions
 * are taken from the process (libpqwalreceiver, loaded first, brings libpq),
 * so this library does not link libpq itself.
 */
#include "postgres.h"

#include <dlfcn.h>

#include "libpq-fe.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "replication/walreceiver.h"
#include "storage/latch.h"
#include "utils/memutils.h"

#if PG_VERSION_NUM < 150000 || PG_VERSION_NUM >= 170000
#error "sync_logical_slot's connection code is written for PostgreSQL 15 and 16"
#endif

/* libpqwalreceiver.c's struct WalReceiverConn (PostgreSQL 15, 16). */
struct WalReceiverConn
{
	PGconn	   *streamConn;
	bool		logical;
	char	   *recvBuf;
};

/* Rust (src/worker.rs): a reload came since the attempt began (a flag read). */
extern bool sls_connect_abandoned(void);

WalReceiverConn *sls_connect(const char *conninfo, const char *appname, char **err);

static struct
{
	PGconn	   *(*connect_start_params) (const char *const *keywords,
										 const char *const *values, int expand_dbname);
	PostgresPollingStatusType (*connect_poll) (PGconn *conn);
	ConnStatusType (*status) (const PGconn *conn);
	int			(*socket) (const PGconn *conn);
	char	   *(*error_message) (const PGconn *conn);
	void		(*finish) (PGconn *conn);
}			pq;

static bool
find_libpq(char **err)
{
	if (pq.finish != NULL)
		return true;
	pq.connect_start_params = dlsym(RTLD_DEFAULT, "PQconnectStartParams");
	pq.connect_poll = dlsym(RTLD_DEFAULT, "PQconnectPoll");
	pq.status = dlsym(RTLD_DEFAULT, "PQstatus");
	pq.socket = dlsym(RTLD_DEFAULT, "PQsocket");
	pq.error_message = dlsym(RTLD_DEFAULT, "PQerrorMessage");
	pq.finish = dlsym(RTLD_DEFAULT, "PQfinish");
	if (pq.connect_start_params && pq.connect_poll && pq.status && pq.socket &&
		pq.error_message && pq.finish)
		return true;
	pq.finish = NULL;
	*err = pstrdup("libpq is not loaded (libpqwalreceiver must be loaded first)");
	return false;
}

/* libpq's message, on one line, in the caller's memory context. */
static char *
message_of(PGconn *conn)
{
	char	   *text = pstrdup(conn ? pq.error_message(conn) : "out of memory");
	char	   *p;

	for (p = text; *p; p++)
		if (*p == '\n')
			*p = ' ';
	while (p > text && p[-1] == ' ')
		*--p = '\0';
	return text;
}

/*
 * A logical (replication=database) connection to conninfo, or NULL with
 * *err (palloc'd in the caller's context) when it fails or a reload or
 * request abandons it. The result lives in TopMemoryContext until
 * walrcv_disconnect.
 */
WalReceiverConn *
sls_connect(const char *conninfo, const char *appname, char **err)
{
	const char *keys[5];
	const char *vals[5];
	PGconn	   *conn;
	volatile PostgresPollingStatusType status = PGRES_POLLING_WRITING;
	WalReceiverConn *result;

	if (!find_libpq(err))
		return NULL;
	/* Allocated first: nothing that may fail comes after the connection is made. */
	result = MemoryContextAllocZero(TopMemoryContext, sizeof(WalReceiverConn));
	keys[0] = "dbname";
	vals[0] = conninfo;
	keys[1] = "replication";
	vals[1] = "database";
	keys[2] = "fallback_application_name";
	vals[2] = appname;
	keys[3] = "client_encoding";
	vals[3] = GetDatabaseEncodingName();
	keys[4] = NULL;
	vals[4] = NULL;

	conn = pq.connect_start_params(keys, vals, true);
	if (conn == NULL || pq.status(conn) == CONNECTION_BAD)
		goto failed;

	/* Whatever raises in the loop (an interrupt, a failed wait) closes the attempt first. */
	PG_TRY();
	{
	do
	{
		int			io = status == PGRES_POLLING_READING ? WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE;
		int			rc = WaitLatchOrSocket(MyLatch, WL_EXIT_ON_PM_DEATH | WL_LATCH_SET | io,
										   pq.socket(conn), 0,
										   WAIT_EVENT_LIBPQWALRECEIVER_CONNECT);

		if (rc & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			if (sls_connect_abandoned())
			{
				status = PGRES_POLLING_FAILED;
				break;
			}
			/* Other interrupts as everywhere (barriers, memory context logging, terminate). */
			CHECK_FOR_INTERRUPTS();
		}
		if (rc & io)
			status = pq.connect_poll(conn);
	} while (status != PGRES_POLLING_OK && status != PGRES_POLLING_FAILED);
	}
	PG_CATCH();
	{
		pq.finish(conn);
		pfree(result);
		PG_RE_THROW();
	}
	PG_END_TRY();

	if (sls_connect_abandoned() && pq.status(conn) != CONNECTION_OK)
	{
		pq.finish(conn);
		pfree(result);
		*err = pstrdup("the connection attempt was given up for a reload");
		return NULL;
	}

	if (pq.status(conn) != CONNECTION_OK)
		goto failed;
	result->streamConn = conn;
	result->logical = true;
	return result;

failed:
	*err = message_of(conn);
	if (conn != NULL)
		pq.finish(conn);
	pfree(result);
	return NULL;
}
