/* mount.c - mount specs (vfs.h): the CLI's forms parsed, and the provider a spec names. */
#include "base/err.h"
#include "vfs/vfs.h"

#include <stdlib.h>

void gd_vfs_provider_free(gd_vfs_provider *pv)
{
    if (!pv)
        return;
    if (pv->ops && pv->ops->destroy)
        pv->ops->destroy(pv->p);
    free(pv);
}
