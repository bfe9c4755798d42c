// SPDX-License-Identifier: GPL-2.0
/*
 * mydriver: a small driver with two classic bugs, for kmemgdb's tutorial and examples.
 *
 * It queues requests written to /sys/kernel/debug/mydriver/cmd:
 *   submit LEN   queue a request with a LEN-byte payload (at most 64 bytes)
 *   dump         print the queued requests to the kernel log
 *   flush        complete and free every queued request
 *
 * Bug 1 (a leak): a request longer than 64 bytes is refused after it was allocated, and the
 * error path returns without freeing it or its payload.
 * Bug 2 (an uninitialized read): requests come from a private cache without __GFP_ZERO and
 * mydriver_req_new() never sets ->flags, which mydriver_submit() then tests.
 * ->retries is never set either; only `dump` reads it (a known, accepted finding that
 * examples/mydriver.kmemcheck-supp suppresses).
 */
#include <linux/debugfs.h>
#include <linux/fs.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#define MYDRIVER_MAX_LEN	64
#define MYDRIVER_URGENT		0x1

struct mydriver_req {
	struct list_head node;
	u32 id;
	u32 len;
	u32 flags;
	u32 retries;
	char *payload;
};

static struct kmem_cache *mydriver_req_cache;
static LIST_HEAD(mydriver_reqs);
static DEFINE_MUTEX(mydriver_lock);
static struct dentry *mydriver_dir;
static u32 mydriver_next_id;
static unsigned long mydriver_urgent;

static struct mydriver_req *mydriver_req_new(u32 len)
{
	struct mydriver_req *req = kmem_cache_alloc(mydriver_req_cache, GFP_KERNEL);

	if (!req)
		return NULL;
	req->payload = kmalloc(len, GFP_KERNEL);
	if (!req->payload) {
		kmem_cache_free(mydriver_req_cache, req);
		return NULL;
	}
	memset(req->payload, 0, len);
	req->id = ++mydriver_next_id;
	req->len = len;
	return req;		/* BUG: ->flags and ->retries left uninitialized */
}

static void mydriver_req_free(struct mydriver_req *req)
{
	kfree(req->payload);
	kmem_cache_free(mydriver_req_cache, req);
}

static int mydriver_submit(u32 len)
{
	struct mydriver_req *req = mydriver_req_new(len ? len : 1);

	if (!req)
		return -ENOMEM;
	if (len > MYDRIVER_MAX_LEN)
		return -EINVAL;		/* BUG: leaks req and its payload */
	if (READ_ONCE(req->flags) & MYDRIVER_URGENT)	/* BUG: reads an uninitialized field */
		mydriver_urgent++;
	list_add_tail(&req->node, &mydriver_reqs);
	return 0;
}

static void mydriver_dump(void)
{
	struct mydriver_req *req;

	list_for_each_entry(req, &mydriver_reqs, node)
		pr_info("mydriver: request %u: %u bytes, %u retries\n", req->id, req->len,
			READ_ONCE(req->retries));
}

static void mydriver_flush(void)
{
	struct mydriver_req *req, *next;

	list_for_each_entry_safe(req, next, &mydriver_reqs, node) {
		list_del(&req->node);
		mydriver_req_free(req);
	}
}

static ssize_t mydriver_cmd_write(struct file *file, const char __user *ubuf, size_t count,
				  loff_t *ppos)
{
	char buf[32];
	u32 len;
	int ret = 0;

	if (count >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, count))
		return -EFAULT;
	buf[count] = '\0';
	mutex_lock(&mydriver_lock);
	if (sscanf(buf, "submit %u", &len) == 1)
		ret = mydriver_submit(len);
	else if (sysfs_streq(buf, "dump"))
		mydriver_dump();
	else if (sysfs_streq(buf, "flush"))
		mydriver_flush();
	else
		ret = -EINVAL;
	mutex_unlock(&mydriver_lock);
	return ret ? ret : count;
}

static const struct file_operations mydriver_cmd_fops = {
	.owner = THIS_MODULE,
	.write = mydriver_cmd_write,
};

static int __init mydriver_init(void)
{
	mydriver_req_cache = kmem_cache_create("mydriver_req", sizeof(struct mydriver_req), 0, 0, NULL);
	if (!mydriver_req_cache)
		return -ENOMEM;
	mydriver_dir = debugfs_create_dir("mydriver", NULL);
	debugfs_create_file("cmd", 0200, mydriver_dir, NULL, &mydriver_cmd_fops);
	return 0;
}

static void __exit mydriver_exit(void)
{
	debugfs_remove_recursive(mydriver_dir);
	mydriver_flush();
	kmem_cache_destroy(mydriver_req_cache);
}

module_init(mydriver_init);
module_exit(mydriver_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmemgdb example: a driver with a leak and an uninitialized read");
