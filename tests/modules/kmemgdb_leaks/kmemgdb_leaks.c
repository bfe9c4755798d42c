// SPDX-License-Identifier: GPL-2.0
/*
 * A driver-shaped module that leaks the way drivers do, for kmemgdb's leak-report tests.
 * Each leak comes from a helper of its own, so its allocation site is known; the init prints
 * "kmemgdb_leaks: NAME = ADDRESS" for each object a test looks for, and "expect" lines say
 * whether kmemleak should report it.
 *
 * Writing to /sys/kernel/debug/kmemgdb_leaks runs a heap bug:
 *   double_free   frees an object of a private cache twice
 *   overflow      writes 8 bytes past a 32-byte kmalloc, then frees it (a redzone overwrite)
 *   leak          leaks a request made for the writing task (named when it has exited)
 *
 * With crash_in_init=1 the init dereferences NULL after it leaked (an oops in insmod), with
 * panic_in_init=1 it panics.
 */
#include <linux/debugfs.h>
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/kmemleak.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/vmalloc.h>

struct leaks_req {
	u64 id;
	void *payload;
	char tag[56];
};

struct leaks_holder {
	void *near;		/* offset 0: outside the scan area */
	char pad[248];
	void *far;		/* offset 256: inside the scan area */
};

static struct kmem_cache *leaks_req_cache, *leaks_df_cache;
static struct dentry *leaks_file;
static void *volatile leaks_df_kept;
static bool crash_in_init, panic_in_init;
module_param(crash_in_init, bool, 0);
module_param(panic_in_init, bool, 0);
/* Objects the module keeps (and frees on exit); they keep others alive, or not. */
static struct leaks_holder *leaks_holder;
static void **leaks_noscan;
static void *volatile leaks_sink;

static void leaks_report(const char *name, const void *p, bool reported)
{
	pr_info("kmemgdb_leaks: %s = %px expect %s\n", name, p, reported ? "leak" : "no-leak");
}

static noinline struct leaks_req *leaks_new_req(u64 id)
{
	struct leaks_req *req = kmem_cache_alloc(leaks_req_cache, GFP_KERNEL);

	if (req) {
		req->id = id;
		req->payload = NULL;
		strscpy(req->tag, "request", sizeof(req->tag));
	}
	return req;
}

static noinline char *leaks_dup_name(const char *name)
{
	return kstrdup(name, GFP_KERNEL);
}

static noinline void *leaks_dup_blob(void)
{
	static const u8 blob[40] = { 1, 2, 3, 4 };

	return kmemdup(blob, sizeof(blob), GFP_KERNEL);
}

static noinline void *leaks_grow(void)
{
	void *p = kmalloc(16, GFP_KERNEL);
	void *q = krealloc(p, 700, GFP_KERNEL);

	if (!q)
		kfree(p);
	return q;
}

static noinline void *leaks_table(void)
{
	return kvmalloc(64 << 10, GFP_KERNEL);		/* too big for kmalloc: vmalloc */
}

static noinline void *leaks_big_buffer(void)
{
	return kmalloc(16 << 10, GFP_KERNEL);		/* above the kmalloc caches: pages */
}

static noinline void *leaks_ring(void)
{
	return vzalloc(3 * PAGE_SIZE);
}

/* A device never added nor released, with managed memory: both leak, the devres through it. */
static noinline void *leaks_managed(void)
{
	struct device *dev = kzalloc(sizeof(*dev), GFP_KERNEL);

	if (!dev)
		return NULL;
	device_initialize(dev);
	leaks_report("devm_device", dev, true);
	return devm_kzalloc(dev, 80, GFP_KERNEL);
}

static noinline void leaks_trace_here(void *p)
{
	kmemleak_update_trace(p);
}

static noinline void leaks_make(void)
{
	void *p;

	leaks_report("private_cache", leaks_new_req(1), true);
	leaks_report("kstrdup", leaks_dup_name("kmemgdb-leaks-name"), true);
	leaks_report("kmemdup", leaks_dup_blob(), true);
	leaks_report("krealloc", leaks_grow(), true);
	leaks_report("kvmalloc", leaks_table(), true);
	leaks_report("large_kmalloc", leaks_big_buffer(), true);
	leaks_report("vzalloc", leaks_ring(), true);
	leaks_report("devm_kzalloc", leaks_managed(), true);

	/* Annotated objects nobody points to. */
	p = kzalloc(136, GFP_KERNEL);
	kmemleak_not_leak(p);
	leaks_report("not_leak", p, false);
	p = kzalloc(104, GFP_KERNEL);
	kmemleak_ignore(p);
	leaks_report("ignore", p, false);

	/* kmemleak_no_scan: the kept object's pointer does not keep its target alive. */
	leaks_noscan = kmalloc(200, GFP_KERNEL);
	if (leaks_noscan) {
		kmemleak_no_scan(leaks_noscan);
		leaks_noscan[0] = kmalloc(168, GFP_KERNEL);
		leaks_report("behind_no_scan", leaks_noscan[0], true);
	}

	/* kmemleak_scan_area: only the far pointer of the holder is a reference. */
	leaks_holder = kzalloc(sizeof(*leaks_holder), GFP_KERNEL);
	if (leaks_holder) {
		kmemleak_scan_area(&leaks_holder->far, sizeof(void *), GFP_KERNEL);
		WRITE_ONCE(leaks_holder->near, kmalloc(232, GFP_KERNEL));
		WRITE_ONCE(leaks_holder->far, kmalloc(184, GFP_KERNEL));
		leaks_report("outside_scan_area", leaks_holder->near, true);
		leaks_report("inside_scan_area", leaks_holder->far, false);
	}

	/* kmemleak_update_trace: the leak's backtrace is where the trace was updated. */
	p = kmalloc(88, GFP_KERNEL);
	leaks_trace_here(p);
	leaks_report("update_trace", p, true);
}

/*
 * Another free between the two: a hardened freelist (CONFIG_SLAB_FREELIST_HARDENED) BUGs on
 * freeing the object at its head again, not on this.
 */
static noinline void leaks_double_free(void)
{
	void *p = kmem_cache_alloc(leaks_df_cache, GFP_KERNEL);
	void *q = kmem_cache_alloc(leaks_df_cache, GFP_KERNEL);

	pr_info("kmemgdb_leaks: double_free = %px\n", p);
	kmem_cache_free(leaks_df_cache, p);
	kmem_cache_free(leaks_df_cache, q);
	kmem_cache_free(leaks_df_cache, p);
}

static noinline void leaks_overflow(void)
{
	char *p = kmalloc(32, GFP_KERNEL);
	size_t n = 32 + 8;

	if (!p)
		return;
	OPTIMIZER_HIDE_VAR(n);
	pr_info("kmemgdb_leaks: overflow = %px\n", p);
	memset(p, 0x5a, n);
	kfree(p);
}

static ssize_t leaks_write(struct file *file, const char __user *ubuf, size_t len, loff_t *ppos)
{
	char cmd[32] = "";

	if (copy_from_user(cmd, ubuf, min(len, sizeof(cmd) - 1)))
		return -EFAULT;
	if (sysfs_streq(cmd, "double_free"))
		leaks_double_free();
	else if (sysfs_streq(cmd, "overflow"))
		leaks_overflow();
	else if (sysfs_streq(cmd, "leak"))
		leaks_report("write_leak", leaks_new_req(2), true);
	else
		return -EINVAL;
	return len;
}

static const struct file_operations leaks_fops = {
	.owner = THIS_MODULE,
	.write = leaks_write,
};

static int __init kmemgdb_leaks_init(void)
{
	leaks_req_cache = kmem_cache_create("kmemgdb_leaks_req", sizeof(struct leaks_req), 0, 0, NULL);
	leaks_df_cache = kmem_cache_create("kmemgdb_leaks_df", 40, 0, 0, NULL);
	if (!leaks_req_cache || !leaks_df_cache) {
		kmem_cache_destroy(leaks_req_cache);
		kmem_cache_destroy(leaks_df_cache);
		return -ENOMEM;
	}
	/* One object kept so the double free's slab stays in use. */
	leaks_df_kept = kmem_cache_alloc(leaks_df_cache, GFP_KERNEL);
	leaks_make();
	if (crash_in_init)
		WRITE_ONCE(*(int *)leaks_sink, 1);	/* leaks_sink is NULL */
	if (panic_in_init)
		panic("kmemgdb_leaks: asked to panic");
	leaks_file = debugfs_create_file("kmemgdb_leaks", 0200, NULL, NULL, &leaks_fops);
	return 0;
}

static void __exit kmemgdb_leaks_exit(void)
{
	debugfs_remove(leaks_file);
	if (leaks_holder) {
		kfree(leaks_holder->near);
		kfree(leaks_holder->far);
		kfree(leaks_holder);
	}
	if (leaks_noscan)
		kfree(leaks_noscan[0]);
	kfree(leaks_noscan);
}

module_init(kmemgdb_leaks_init);
module_exit(kmemgdb_leaks_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmemgdb leak-report test module: leaks through every helper, annotations, heap bugs");
