/* watchfiles: devconsumer's watch of the project's files (inotify). An app file that changes
 * is loaded into a new Lua state between two messages and swapped in when it loads; a change
 * to settings.lua, once it validates, restarts the process (new connections, topology
 * declared again). Saves in quick succession (an editor writes, renames, touches) reload once. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "config/config.h"
#include "consumer/internal.h"
#include "util/clock.h"
#include "util/error.h"
#include "util/log.h"

#define QUIET_S 0.2 /* saves closer than this reload once */
#define MAX_WDS 256
#define WATCHED (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE)

bool svc_consumer_dev;

struct svc_consumer_devwatch {
	int fd;
	int root_wd;
	int wds[MAX_WDS];
	char *paths[MAX_WDS]; /* directory of each watch, to add the ones created later */
	int n;
	bool apps_changed, settings_changed;
	double last_event;
	char changed[256]; /* the last file that changed, for the log line */
};

static void add_tree(struct svc_consumer_devwatch *w, const char *dir, int depth)
{
	if (w->n >= MAX_WDS || depth > 8)
		return;
	int wd = inotify_add_watch(w->fd, dir, WATCHED | IN_ONLYDIR);
	if (wd < 0) {
		svc_warn(LOG, "cannot watch %s: %s", dir, strerror(errno));
		return;
	}
	if (w->n == 0)
		w->root_wd = wd;
	w->wds[w->n] = wd;
	w->paths[w->n++] = strdup(dir);
	DIR *d = opendir(dir);
	if (!d)
		return;
	for (struct dirent *e; (e = readdir(d));) {
		char sub[PATH_MAX];
		if (e->d_name[0] == '.' || e->d_type != DT_DIR)
			continue;
		snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name);
		add_tree(w, sub, depth + 1);
	}
	closedir(d);
}

int svc_consumer_devwatch_open(struct svc_consumer *c)
{
	struct svc_consumer_devwatch *w = calloc(1, sizeof(*w));

	if (!w)
		return SVC_ENOMEM;
	w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (w->fd < 0) {
		svc_error(LOG, "inotify: %s", strerror(errno));
		free(w);
		return SVC_ECONFIG;
	}
	add_tree(w, c->cfg->dir ? c->cfg->dir : ".", 0);
	c->dev = w;
	svc_info(LOG, "devconsumer: watching settings.lua and the .lua files under %s",
	         c->cfg->dir ? c->cfg->dir : ".");
	return 0;
}

void svc_consumer_devwatch_close(struct svc_consumer *c)
{
	struct svc_consumer_devwatch *w = c->dev;

	if (!w)
		return;
	close(w->fd);
	for (int i = 0; i < w->n; i++)
		free(w->paths[i]);
	free(w);
	c->dev = NULL;
}

static const char *dir_of(struct svc_consumer_devwatch *w, int wd)
{
	for (int i = 0; i < w->n; i++)
		if (w->wds[i] == wd)
			return w->paths[i];
	return NULL;
}

static bool ends_with(const char *s, const char *tail)
{
	size_t n = strlen(s), t = strlen(tail);
	return n >= t && strcmp(s + n - t, tail) == 0;
}

static void on_event(struct svc_consumer *c, const struct inotify_event *ev)
{
	struct svc_consumer_devwatch *w = c->dev;
	const char *dir = dir_of(w, ev->wd);
	const char *base = strrchr(c->cfg->path, '/');

	base = base ? base + 1 : c->cfg->path;
	if (!ev->len || !dir || ev->name[0] == '.')
		return;
	if (ev->mask & IN_ISDIR) {
		if (ev->mask & (IN_CREATE | IN_MOVED_TO)) {
			char sub[PATH_MAX];
			snprintf(sub, sizeof(sub), "%s/%s", dir, ev->name);
			add_tree(w, sub, 1);
		}
		w->apps_changed = true; /* an app folder came or went */
	} else if (ev->wd == w->root_wd && strcmp(ev->name, base) == 0) {
		w->settings_changed = true;
	} else if (ends_with(ev->name, ".lua")) {
		w->apps_changed = true;
	} else {
		return;
	}
	snprintf(w->changed, sizeof(w->changed), "%s", ev->name);
	w->last_event = svc_clock_mono();
}

static void drain(struct svc_consumer *c)
{
	char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));

	for (;;) {
		ssize_t n = read(c->dev->fd, buf, sizeof(buf));
		if (n <= 0)
			return;
		for (char *p = buf; p < buf + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;
			on_event(c, ev);
			p += sizeof(*ev) + ev->len;
		}
	}
}

int svc_consumer_devwatch_poll(struct svc_consumer *c)
{
	struct svc_consumer_devwatch *w = c->dev;
	char err[4096];

	if (!w)
		return 0;
	drain(c);
	if (!(w->apps_changed || w->settings_changed) || svc_clock_mono() - w->last_event < QUIET_S)
		return 0;
	/* the new code starts with the next message: what ran with the old one is committed */
	int rc = svc_consumer_commit_batch(c);
	if (rc)
		return rc;
	bool settings = w->settings_changed;
	w->apps_changed = w->settings_changed = false;
	double t0 = svc_clock_mono();
	if (svc_consumer_lua_reload(c, err, sizeof(err)) != 0) {
		svc_error(LOG,
		          "reload after %s changed failed, the previous code keeps running: %s",
		          w->changed, err);
		return 0;
	}
	double ms = (svc_clock_mono() - t0) * 1000.0;
	if (settings) {
		/* URLs, queue, bindings may have changed: start again with fresh connections, which
		 * declares the topology anew (the batch is committed and acked) */
		svc_info(LOG,
		         "%s changed and validates (%.1f ms): restarting with the new settings",
		         w->changed, ms);
		svc_consumer_reload = 1;
		svc_consumer_stop = 1;
		return 0;
	}
	svc_info(LOG, "apps reloaded in %.1f ms after %s changed (connections kept)", ms,
	         w->changed);
	return 0;
}
